"""Recipe helpers and WarmupSchedule, checked against values worked out by hand from
shared/paper-notes.md (Goyal et al. 2017)."""
import math

import pytest
import torch
from torch import nn

from fastallreduce.optim import SGD, WarmupSchedule, param_groups, scaled_lr, zero_init_last_bn


# --- a torchvision-like ResNet, written here (torchvision is not a dependency) ------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet(nn.Module):
    def __init__(self, block, layers, width=8, classes=10):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layers = nn.Sequential(*[self._layer(block, width * 2 ** i, n, 1 if i == 0 else 2)
                                      for i, n in enumerate(layers)])
        self.fc = nn.Linear(self.inplanes, classes)

    def _layer(self, block, width, n, stride):
        down = None
        if stride != 1 or self.inplanes != width * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, width * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(width * block.expansion))
        blocks = [block(self.inplanes, width, stride, down)]
        self.inplanes = width * block.expansion
        blocks += [block(self.inplanes, width) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x).mean((2, 3))
        return self.fc(x)


# --- scaled_lr ------------------------------------------------------------------------------------
def test_scaled_lr_linear_rule():
    # paper: 256 workers (32 servers x 8 GPUs) x n = 32 -> kn = 8k -> lr 0.1 * 8192 / 256 = 3.2
    assert scaled_lr(256 * 32) == pytest.approx(3.2)
    assert scaled_lr(32 * 32) == pytest.approx(0.4)            # k = 32 workers, n = 32
    assert scaled_lr(256) == pytest.approx(0.1)                # the reference point
    assert scaled_lr(8 * 32 * 4) == pytest.approx(0.4)         # 8 workers x 32 x 4 accumulation steps
    assert scaled_lr(512, base_lr=0.2, reference_batch=128) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        scaled_lr(0)


# --- param_groups ---------------------------------------------------------------------------------
def test_param_groups_exclude_norms_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(),
                          nn.LayerNorm(4), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[5].weight)}
    expected = [model[0].bias, model[1].weight, model[1].bias, model[2].weight, model[2].bias,
                model[4].weight, model[4].bias, model[5].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}
    # every parameter exactly once, usable by any optimizer
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    SGD(param_groups(model, 1e-4), lr=0.1, momentum=0.9)
    torch.optim.SGD(param_groups(model, 1e-4), lr=0.1)


def test_param_groups_shared_parameter_once_and_no_empty_group():
    lin = nn.Linear(3, 3, bias=False)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    groups = param_groups(model, 5e-4)
    assert len(groups) == 1 and len(groups[0]["params"]) == 1


# --- zero_init_last_bn ----------------------------------------------------------------------------
@pytest.mark.parametrize("block,layers,last", [(BasicBlock, [2, 2], "bn2"), (Bottleneck, [2, 1, 1], "bn3")])
def test_zero_init_last_bn_torchvision_style(block, layers, last):
    model = ResNet(block, layers)
    names = zero_init_last_bn(model)
    blocks = [m for m in model.modules() if isinstance(m, block)]
    assert len(names) == len(blocks) == sum(layers)
    for b in blocks:
        assert torch.count_nonzero(getattr(b, last).weight) == 0
        assert torch.all(getattr(b, last).bias == 0)                    # beta untouched (already 0)
        assert torch.all(b.bn1.weight == 1)
        if b.downsample is not None:
            assert torch.all(b.downsample[1].weight == 1)               # the projection BN keeps gamma=1
    assert torch.all(model.bn1.weight == 1)
    assert names[0] == f"layers.0.0.{last}"
    # each block is now the identity on its residual branch: output = relu(shortcut)
    b = blocks[1]
    x = torch.randn(2, b.conv1.in_channels, 5, 5)
    b.eval()
    torch.testing.assert_close(b(x), torch.relu(x))


class NamedBlock(nn.Module):
    """A custom residual block following the convention: its last norm is `bn_last`."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn_last = nn.GroupNorm(2, c)

    def forward(self, x):
        return x + self.bn_last(self.conv(x))


class MarkedBlock(nn.Module):
    """A custom residual block that points at its last norm with `last_bn`."""

    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(c, c), nn.LayerNorm(c), nn.Linear(c, c), nn.LayerNorm(c))
        self.last_bn = self.body[3]

    def forward(self, x):
        return x + self.body(x)


def test_zero_init_last_bn_named_conventions():
    model = nn.Sequential(NamedBlock(4), nn.Flatten(), nn.Linear(4 * 9, 4), MarkedBlock(4))
    names = zero_init_last_bn(model)
    assert names == ["0.bn_last", "3.body.3"]
    assert torch.count_nonzero(model[0].bn_last.weight) == 0
    assert torch.count_nonzero(model[3].body[3].weight) == 0
    assert torch.all(model[3].body[1].weight == 1)


def test_zero_init_last_bn_errors():
    with pytest.raises(ValueError, match="no residual block"):
        zero_init_last_bn(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    block = NamedBlock(4)
    block.bn_last = nn.BatchNorm2d(4, affine=False)
    with pytest.raises(ValueError, match="affine weight"):
        zero_init_last_bn(block)


# --- WarmupSchedule -------------------------------------------------------------------------------
def _lrs(sched, n):
    """lr of group 0 after 0, 1, ..., n-1 scheduler steps (read from the optimizer itself)."""
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def _opt(lr, groups=1):
    ps = [nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    return torch.optim.SGD([{"params": [p], "lr": lr * (i + 1)} for i, p in enumerate(ps)], lr=lr)


def test_gradual_warmup_and_multistep_paper_values():
    # kn = 8k: target 3.2; warmup over 5 epochs from 0.1; 100 iterations per epoch (T = 500)
    ipe = 100
    lr = _lrs(WarmupSchedule(_opt(scaled_lr(8192)), iters_per_epoch=ipe), 9000)
    assert lr[0] == pytest.approx(0.1)
    assert lr[1] == pytest.approx(0.1 + 3.1 / 500)            # raised every iteration
    assert lr[250] == pytest.approx(1.65)                     # half way: 0.1 + 3.1 / 2
    assert lr[499] == pytest.approx(0.1 + 3.1 * 499 / 500)
    assert lr[500] == pytest.approx(3.2)                      # epoch 5: the target
    assert lr[2999] == pytest.approx(3.2)
    assert lr[3000] == pytest.approx(0.32)                    # epoch 30: / 10
    assert lr[5999] == pytest.approx(0.32)
    assert lr[6000] == pytest.approx(0.032)                   # epoch 60
    assert lr[8000] == pytest.approx(0.0032)                  # epoch 80
    assert lr[8999] == pytest.approx(0.0032)
    assert all(b > a for a, b in zip(lr[:500], lr[1:501]))    # strictly increasing warmup


def test_constant_warmup_and_no_warmup():
    lr = _lrs(WarmupSchedule(_opt(3.2), iters_per_epoch=10, warmup="constant"), 301)
    assert lr[0] == lr[49] == pytest.approx(0.1) and lr[50] == pytest.approx(3.2)
    assert lr[300] == pytest.approx(0.32)
    lr = _lrs(WarmupSchedule(_opt(3.2), iters_per_epoch=10, warmup=None, milestones=(2,)), 21)
    assert lr[0] == pytest.approx(3.2) and lr[19] == pytest.approx(3.2) and lr[20] == pytest.approx(0.32)


def test_cosine_decay():
    ipe, T, total = 10, 50, 900   # 5 warmup epochs, 90 epochs
    lr = _lrs(WarmupSchedule(_opt(1.6), iters_per_epoch=ipe, decay="cosine", total_epochs=90), total + 5)
    assert lr[T] == pytest.approx(1.6)
    assert lr[T + (total - T) // 2] == pytest.approx(0.8)                        # cos(pi/2) = 0
    assert lr[T + 100] == pytest.approx(1.6 * (1 + math.cos(math.pi * 100 / 850)) / 2)
    assert lr[total] == pytest.approx(0.0, abs=1e-12) and lr[total + 4] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="total_epochs"):
        WarmupSchedule(_opt(1.0), iters_per_epoch=10, decay="cosine")


def test_each_group_warms_up_to_its_own_lr():
    opt = _opt(0.4, groups=2)                          # targets 0.4 and 0.8
    sched = WarmupSchedule(opt, iters_per_epoch=4, warmup_epochs=1, warmup_start_lr=[0.1, 0.2])
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.1, 0.2])
    assert seen[2] == pytest.approx([0.25, 0.5])
    assert seen[4] == pytest.approx([0.4, 0.8])


def test_resume_from_state_dict_with_our_sgd():
    model = nn.Linear(4, 2)
    opt = SGD(param_groups(model, 1e-4), lr=3.2, momentum=0.9)
    sched = WarmupSchedule(opt, iters_per_epoch=20, warmup_epochs=2, milestones=(3, 4))
    for _ in range(37):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    tail = _lrs(sched, 60)

    model2 = nn.Linear(4, 2)
    opt2 = SGD(param_groups(model2, 1e-4), lr=0.001, momentum=0.9)
    opt2.load_state_dict(saved_opt)
    sched2 = WarmupSchedule(opt2, iters_per_epoch=20, warmup_epochs=2, milestones=(3, 4))
    sched2.load_state_dict(saved_sched)
    assert opt2.param_groups[0]["lr"] == pytest.approx(tail[0])
    assert _lrs(sched2, 60) == pytest.approx(tail)
    # saved after 37 steps: warmup ends at 40, milestones at iterations 60 and 80
    assert tail[2] < 3.2 and tail[3] == pytest.approx(3.2) and tail[22] == pytest.approx(3.2)
    assert tail[23] == pytest.approx(0.32) and tail[43] == pytest.approx(0.032)


def test_schedule_validation():
    for kwargs in (dict(iters_per_epoch=0), dict(iters_per_epoch=10, warmup="linear"),
                   dict(iters_per_epoch=10, decay="step"), dict(iters_per_epoch=10, warmup_epochs=-1),
                   dict(iters_per_epoch=10, warmup_start_lr=[0.1, 0.2])):
        with pytest.raises(ValueError):
            WarmupSchedule(_opt(1.0), **kwargs)
