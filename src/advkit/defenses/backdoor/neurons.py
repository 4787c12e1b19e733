"""The neurons a backdoor mitigation works on: where they are, how to read and switch them off.

"Neurons" are the inputs of the model's first ``nn.Linear`` (``features``: on a CNN
that flattens its last feature map, one neuron per channel *and position*), the inputs
of its last ``nn.Linear`` (``linear``, the second-to-last layer of Neural Cleanse) or
the channels of its last main-path convolution (``conv``, taken after the
``BatchNorm2d`` that follows it, if any). :func:`rank_neurons` orders them by how much
more a reversed trigger excites them than clean data does; the mitigations of
:mod:`advkit.defenses.backdoor.mitigation` filter inputs and prune on that ranking.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from advkit.core import ModelHandle
from advkit.defenses.backdoor.neural_cleanse import ReversedTrigger
from advkit.errors import AdvkitError

LAYERS = ("linear", "features", "conv")


def _modules_of(net: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    """The modules of ``net`` of type ``kind`` (by class, or by name for TorchScript), in order."""
    return [m for m in net.modules() if isinstance(m, kind) or getattr(m, "original_name", None) == kind.__name__]


def takes_inputs(layer: str) -> bool:
    """Linear-type layers prune input features (weight columns); ``conv`` prunes output channels."""
    return layer != "conv"


SHORTCUT_NAMES = ("shortcut", "downsample", "skip")  # torchvision's, timm's and advkit's names


def _main_path_conv(net: nn.Module) -> nn.Module | None:
    """The last ``nn.Conv2d`` outside shortcut branches, or its ``BatchNorm2d`` when one follows it.

    A module whose qualified name has a part named like a shortcut (``shortcut``,
    ``downsample``, ``skip``) is a side branch. The BatchNorm that follows a convolution
    is the next ``BatchNorm2d`` registered after it, before any other convolution, with as
    many features as the convolution has output channels.
    """
    named = list(net.named_modules())

    def is_kind(module: nn.Module, kind: type[nn.Module]) -> bool:
        return isinstance(module, kind) or getattr(module, "original_name", None) == kind.__name__

    def on_shortcut(name: str) -> bool:
        return any(part.lower() in SHORTCUT_NAMES for part in name.split("."))

    convs = [i for i, (name, m) in enumerate(named) if is_kind(m, nn.Conv2d) and not on_shortcut(name)]
    if not convs:
        return None
    index = convs[-1]
    conv = named[index][1]
    for name, module in named[index + 1 :]:
        if is_kind(module, nn.Conv2d):
            break
        if is_kind(module, nn.BatchNorm2d) and not on_shortcut(name) and getattr(module, "num_features", None) == getattr(conv, "out_channels", None):
            return module
    return conv


def neuron_layer(net: nn.Module, layer: str) -> nn.Module:
    """Where the neurons are: the inputs of the last ``nn.Linear`` (``linear``, the paper's
    second-to-last layer), the inputs of the first ``nn.Linear`` (``features``: on a CNN that
    flattens its last feature map, one neuron per channel *and position*), or the channels of
    the last main-path ``nn.Conv2d`` (``conv``), taken after its ``BatchNorm2d`` if one
    follows it (then the BatchNorm is returned)."""
    if layer not in LAYERS:
        raise AdvkitError(f"neuron layer must be one of {', '.join(LAYERS)}; got {layer!r}")
    if layer == "conv":
        found = _main_path_conv(net)
        if found is None:
            raise AdvkitError("backdoor mitigation on 'conv' neurons needs a model with an nn.Conv2d layer")
        return found
    found_linear = _modules_of(net, nn.Linear)
    if not found_linear:
        raise AdvkitError(f"backdoor mitigation on '{layer}' neurons needs a model with an nn.Linear layer")
    return found_linear[0] if layer == "features" else found_linear[-1]


def neuron_activations(model: ModelHandle, x: Tensor, layer: str = "linear", batch_size: int = 512) -> Tensor:
    """Per row, the neurons' activations: the last linear layer's inputs, or the last
    main-path convolution's channels (after its BatchNorm) averaged over space after a
    ReLU (captured with a forward hook)."""
    module = neuron_layer(model.net, layer)
    captured: list[Tensor] = []

    def before(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        captured.append(inputs[0].detach().flatten(1).cpu())

    def after(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        captured.append(torch.relu(output.detach()).mean((2, 3)).cpu())

    try:
        hook = module.register_forward_pre_hook(before) if takes_inputs(layer) else module.register_forward_hook(after)
    except (AttributeError, RuntimeError):
        raise AdvkitError("backdoor mitigation needs an eager nn.Module (TorchScript layers take no hooks)") from None
    try:
        model.predict_logits(x, batch_size)
    finally:
        hook.remove()
    return torch.cat(captured)


def switch_off(module: nn.Module, neurons: list[int], layer: str) -> Callable[[], None]:
    """Prune neurons in place (zero their weights; a convolution's or BatchNorm's output
    channels: weight and bias, so the channel is exactly zero); returns a function that undoes it."""
    if takes_inputs(layer):
        saved = module.weight.data[:, neurons].clone()
        module.weight.data[:, neurons] = 0

        def undo() -> None:
            module.weight.data[:, neurons] = saved

        return undo
    saved_w = module.weight.data[neurons].clone()
    saved_b = module.bias.data[neurons].clone() if module.bias is not None else None
    module.weight.data[neurons] = 0
    if module.bias is not None:
        module.bias.data[neurons] = 0

    def undo_conv() -> None:
        module.weight.data[neurons] = saved_w
        if saved_b is not None:
            module.bias.data[neurons] = saved_b

    return undo_conv


def _stamped_rows(trigger: ReversedTrigger, x: Tensor, y: Tensor) -> Tensor:
    """The rows not already of the trigger's target class, with the trigger stamped on."""
    keep = y != trigger.target
    return trigger.apply(x[keep])


def rank_neurons(model: ModelHandle, trigger: ReversedTrigger, x: Tensor, y: Tensor, layer: str = "linear") -> Tensor:
    """Neurons ordered by how much more the trigger excites them than clean data does,
    in units of each neuron's clean standard deviation (a z-score: the paper ranks by the
    raw difference, which favours neurons that are simply loud on every input)."""
    clean = neuron_activations(model, x, layer)
    triggered = neuron_activations(model, _stamped_rows(trigger, x, y), layer).mean(0)
    return torch.argsort((triggered - clean.mean(0)) / (clean.std(0) + 1e-3), descending=True)

