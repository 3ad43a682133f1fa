import pytest
import torch
import torch.nn.functional as F

from models.darknet import Darknet, DarknetConfig, ResLayer, conv_layer


def test_conv_layer_has_no_bias_and_keeps_size():
    layer = conv_layer(3, 8, ks=3)
    assert layer[0].bias is None and layer[0].padding == (1, 1)
    assert layer(torch.randn(2, 3, 16, 16)).shape == (2, 8, 16, 16)


def test_reslayer_is_residual():
    layer = ResLayer(8)
    x = torch.randn(2, 8, 8, 8)
    assert layer(x).shape == x.shape


def test_lesson_darknet_shapes():
    # the lesson's net: 32 px in, groups (1, 2, 4, 6, 3), nf 32 -> 1024 features
    model = Darknet(DarknetConfig())
    assert model.head[-1].in_features == 32 * 2**5
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.head[2].p == 0.0  # dropout defaults to 0: checkpoints load the same


def test_dropout_does_not_change_the_checkpoint():
    a = Darknet(DarknetConfig(groups=(1, 1), nf=8, p=0.0))
    b = Darknet(DarknetConfig(groups=(1, 1), nf=8, p=0.5))
    b.load_state_dict(a.state_dict())  # same keys and shapes whatever p is


def test_loss_falls_on_a_tiny_batch(step_losses):
    torch.manual_seed(0)
    model = Darknet(DarknetConfig(groups=(1, 1), nf=8))
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = step_losses(opt, 30, lambda: F.cross_entropy(model(x), y))
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize("kw", [dict(groups=()), dict(nf=1), dict(p=1.0), dict(groups=(1, -1))])
def test_bad_config_is_a_value_error(kw):
    with pytest.raises(ValueError):
        Darknet(DarknetConfig(**kw))
