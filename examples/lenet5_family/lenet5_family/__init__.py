"""lenet5-family: LeNet-5 as an mnist-hpo model family (the module lenet5_family.lenet5)."""
