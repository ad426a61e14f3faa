# Many cell: 1600 training classes (all characters but the 23 held out). Same holdout set and labels as Few.
n_train_classes = 1600
