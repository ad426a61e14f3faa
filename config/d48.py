# Width variant: d=48 (8 heads of 6; the ResNet's last group is 48 wide, inner width 12).
n_embd = 48
n_head = 8
