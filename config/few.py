# Few cell: the first 100 training classes of config/omniglot.py's seeded class order (a prefix of Many's).
n_train_classes = 100
