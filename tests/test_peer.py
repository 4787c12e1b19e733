"""Cross-check advkit's PGD against torchattacks' on the same model and rows."""

import pytest
import torch

from advkit.attacks.evasion import PGD
from advkit.core import Threat

torchattacks = pytest.importorskip("torchattacks")


@pytest.mark.parametrize("eps", [0.1, 0.15])
def test_pgd_agrees_with_torchattacks(digits_model, digits_test, eps):
    x, y = digits_test.x, digits_test.y
    steps, alpha = 10, 2.5 * eps / 10
    torch.manual_seed(0)
    peer = torchattacks.PGD(digits_model.network.eval(), eps=eps, alpha=alpha, steps=steps, random_start=True)
    x_peer = peer(x, y)
    peer_acc = float((digits_model.predict(x_peer) == y).float().mean())
    ours = PGD(Threat(eps=eps), steps=steps, restarts=1, loss="ce")(digits_model, x, y)
    assert abs(ours.adversarial_accuracy - peer_acc) <= 0.02, (ours.adversarial_accuracy, peer_acc)
    # advkit's default (restarts, margin loss) is at least as strong as the peer.
    default = PGD(Threat(eps=eps))(digits_model, x, y)
    assert default.adversarial_accuracy <= peer_acc + 1e-9
