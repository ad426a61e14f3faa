# Width variant: d=96 (8 heads of 12; the ResNet's last group is 96 wide, inner width 24).
n_embd = 96
n_head = 8
