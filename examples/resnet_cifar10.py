"""A small ResNet (CIFAR-style: 3 stages of basic blocks, batch norm) on CIFAR-10 with random
crops and flips, SGD with Nesterov momentum and a cosine schedule."""

from _common import cifar10, parser, train_and_test

import kiln as kn


class Block(kn.nn.Module):
    """Two 3x3 conv-BN layers with a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = kn.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = kn.nn.BatchNorm2d(cout)
        self.conv2 = kn.nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = kn.nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = kn.nn.Sequential(
                kn.nn.Conv2d(cin, cout, 1, stride=stride, bias=False), kn.nn.BatchNorm2d(cout)
            )

    def forward(self, x: kn.Tensor) -> kn.Tensor:
        y = kn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return kn.relu(y + (x if self.short is None else self.short(x)))


def resnet(width: int, blocks: int) -> kn.nn.Sequential:
    layers = [kn.nn.Conv2d(3, width, 3, padding=1, bias=False), kn.nn.BatchNorm2d(width), kn.nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for b in range(blocks):
            layers.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
            cin = cout
    layers += [kn.nn.AdaptiveAvgPool2d(1), kn.nn.Flatten(), kn.nn.Linear(cin, 10)]
    return kn.nn.Sequential(*layers)


def main() -> float:
    p = parser(__doc__)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--blocks", type=int, default=3, help="basic blocks per stage (3: ResNet-20, 1: ResNet-8)")
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args()
    xtr, ytr, xte, yte = cifar10(args.train, args.test)
    norm = kn.data.Normalize().fit(xtr)
    xtr, xte = norm.transform(xtr), norm.transform(xte)
    kn.manual_seed(args.seed)
    x, y = kn.input("x", (None, 3, 32, 32)), kn.input("y", (None,), "int64")
    model = resnet(args.width, args.blocks)
    logits = model(x)
    epochs = args.epochs or 30
    opt = kn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    augment = kn.data.Compose([kn.data.RandomCrop(32, padding=4), kn.data.RandomHorizontalFlip()])
    data = (xtr, ytr, xte, yte)
    return train_and_test("resnet_cifar10", x, y, logits, opt, data, epochs, args.batch, args.seed, augment)


if __name__ == "__main__":
    main()
