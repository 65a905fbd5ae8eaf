"""Hypernetworks in AUTOMATIC1111's design and file layout (a legacy format, kept for A1111 users).

For each context width (768 for SD 1.x cross-attention, 320/640/1280 for its self-attention), a
pair of small MLPs transforms the attention's context before the key and before the value
projection: `k_in = x + mlp_k(x) · strength`, `v_in = x + mlp_v(x) · strength`. An MLP's widths
are `layer_structure` multiples of the context width (1, 2, 1: dim → 2·dim → dim), with an
activation after every layer but the last (unless `activate_output`), optional LayerNorm, and
dropout per `dropout_structure`. During training the strength is 1.

The file is what A1111 writes with torch.save: `{width: (k_state_dict, v_state_dict), "name",
"layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "use_dropout",
"dropout_structure", "last_layer_dropout", "activate_output", "step", "sd_checkpoint",
"sd_checkpoint_name"}` — tensors and plain values only, so `torch.load(weights_only=True)` reads it.
Sequential indices in the state-dict keys (`linear.0.weight`, `linear.2.weight`, ...) count the
activation, norm and dropout layers, as A1111's do.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}
ACTIVATIONS.update({name.lower(): cls for name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass)
                    if cls.__module__ == "torch.nn.modules.activation" and name.lower() not in ACTIVATIONS})


class HypernetworkError(ValueError):
    """A hypernetwork file or option that cannot be used; the message names the field or key."""


def check_activation(name: str | None) -> None:
    if name not in (None, "linear") and name not in ACTIVATIONS:
        raise HypernetworkError(f"hypernetwork.activation_func: {name!r} is not a torch.nn activation "
                                f"(e.g. {', '.join(list(ACTIVATIONS)[:7])})")


def dropout_structure(layer_structure: list[float], use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """A1111's default per-layer dropout: 0.3 after hidden layers, never after the input or the output."""
    if not use_dropout:
        return [0.0] * len(layer_structure)
    values = [0.0] + [0.3] * (len(layer_structure) - 3)
    return values + [0.3 if last_layer_dropout else 0.0, 0.0]


class HypernetworkModule(nn.Module):
    """One MLP: x + mlp(x) · multiplier (multiplier 1 while training)."""

    def __init__(self, dim: int, layer_structure: list[float], activation_func: str | None = "linear",
                 add_layer_norm: bool = False, activate_output: bool = False,
                 dropout: list[float] | None = None, weight_init: str = "Normal"):
        super().__init__()
        check_activation(activation_func)
        dropout = dropout or [0.0] * len(layer_structure)
        layers: list[nn.Module] = []
        last = len(layer_structure) - 2
        for i in range(len(layer_structure) - 1):
            layers.append(nn.Linear(int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])))
            if activation_func not in (None, "linear") and (i < last or activate_output):
                layers.append(ACTIVATIONS[activation_func]())
            if add_layer_norm:
                layers.append(nn.LayerNorm(int(dim * layer_structure[i + 1])))
            if dropout[i + 1] > 0:
                layers.append(nn.Dropout(p=dropout[i + 1]))
        self.linear = nn.Sequential(*layers)
        self.multiplier = 1.0
        for layer in self.linear:
            if isinstance(layer, (nn.Linear, nn.LayerNorm)):
                _init(layer, weight_init, activation_func)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x) * (1.0 if self.training else self.multiplier)


def _init(layer: nn.Module, weight_init: str, activation_func: str | None) -> None:
    w, b = layer.weight.data, layer.bias.data
    nonlinearity = "leaky_relu" if activation_func == "leakyrelu" else "relu"
    if weight_init == "Normal" or isinstance(layer, nn.LayerNorm):
        nn.init.normal_(w, mean=0.0, std=0.01)
        nn.init.zeros_(b)
        return
    {"XavierUniform": nn.init.xavier_uniform_, "XavierNormal": nn.init.xavier_normal_,
     "KaimingUniform": lambda t: nn.init.kaiming_uniform_(t, nonlinearity=nonlinearity),
     "KaimingNormal": lambda t: nn.init.kaiming_normal_(t, nonlinearity=nonlinearity)}[weight_init](w)
    nn.init.zeros_(b)


class Hypernetwork(nn.Module):
    """The pairs of MLPs, keyed by context width; `transform(context)` gives (key input, value input)."""

    OPTION_KEYS = ("layer_structure", "activation_func", "is_layer_norm", "weight_initialization", "use_dropout",
                   "dropout_structure", "last_layer_dropout", "activate_output")

    def __init__(self, sizes: list[int], layer_structure: list[float], activation_func: str | None = "linear",
                 add_layer_norm: bool = False, use_dropout: bool = False, dropout: list[float] | None = None,
                 last_layer_dropout: bool = False, activate_output: bool = False, weight_init: str = "Normal",
                 name: str = "hypernetwork"):
        super().__init__()
        dropout = dropout if dropout is not None else dropout_structure(layer_structure, use_dropout, last_layer_dropout)
        self.name = name
        self.options = {"layer_structure": list(layer_structure), "activation_func": activation_func,
                        "is_layer_norm": add_layer_norm, "weight_initialization": weight_init,
                        "use_dropout": bool(use_dropout or any(dropout)), "dropout_structure": list(dropout),
                        "last_layer_dropout": len(dropout) > 1 and dropout[-2] != 0, "activate_output": activate_output}
        self.layers = nn.ModuleDict({
            str(size): nn.ModuleList([HypernetworkModule(size, layer_structure, activation_func, add_layer_norm,
                                                         activate_output, dropout, weight_init) for _ in range(2)])
            for size in sorted(set(sizes))})

    @classmethod
    def from_config(cls, options, sizes: list[int], name: str) -> Hypernetwork:
        return cls(options.enable_sizes or sizes, options.layer_structure, options.activation_func,
                   options.add_layer_norm, options.use_dropout, options.dropout_structure, options.last_layer_dropout,
                   options.activate_output, options.weight_init, name)

    @property
    def sizes(self) -> list[int]:
        return [int(size) for size in self.layers]

    def set_strength(self, strength: float) -> None:
        for pair in self.layers.values():
            for module in pair:
                module.multiplier = float(strength)

    def transform(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.layers[str(context.shape[-1])] if str(context.shape[-1]) in self.layers else None
        if pair is None:
            return context, context
        return pair[0](context), pair[1](context)

    def file_state(self, step: int, sd_checkpoint: str | None, sd_checkpoint_name: str | None) -> dict[Any, Any]:
        """A1111's file: {width: (k state dict, v state dict)} plus its option keys, all plain values."""
        state: dict[Any, Any] = {
            int(size): tuple({k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
                             for module in pair)
            for size, pair in self.layers.items()}
        state.update(self.options)
        state.update({"name": self.name, "step": int(step), "sd_checkpoint": sd_checkpoint,
                      "sd_checkpoint_name": sd_checkpoint_name, "optional_info": None})
        return state

    def save(self, path: Path, step: int, sd_checkpoint: str | None = None, sd_checkpoint_name: str | None = None) -> Path:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.file_state(step, sd_checkpoint, sd_checkpoint_name), tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> Hypernetwork:
        """Read an A1111 hypernetwork `.pt` with torch.load(weights_only=True) — no code runs."""
        path = Path(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not any(isinstance(k, int) for k in state):
            raise HypernetworkError(f"{path}: not a hypernetwork file (no {{context width: (k, v)}} entries)")
        layer_structure = state.get("layer_structure") or [1, 2, 1]
        dropout = state.get("dropout_structure") or dropout_structure(
            layer_structure, state.get("use_dropout", False), state.get("last_layer_dropout", False))
        sizes = sorted(k for k in state if isinstance(k, int))
        net = cls(sizes, layer_structure, state.get("activation_func"), state.get("is_layer_norm", False),
                  state.get("use_dropout", False), dropout, state.get("last_layer_dropout", False),
                  state.get("activate_output", True), state.get("weight_initialization", "Normal"),
                  state.get("name") or path.stem)
        for size in sizes:
            for module, weights in zip(net.layers[str(size)], state[size]):
                weights = {_OLD_KEYS.get(k, k): v for k, v in weights.items()}
                try:
                    module.load_state_dict(weights)
                except RuntimeError as error:
                    raise HypernetworkError(f"{path}: width {size}: {str(error).splitlines()[0]}") from None
        net.eval()
        return net


_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}  # the first (NovelAI-era) files


def attention_widths(unet) -> list[int]:
    """Every context width the UNet's attention layers see (A1111's default `enable_sizes`)."""
    from diffusers.models.attention_processor import Attention

    return sorted({m.to_k.in_features for m in unet.modules() if isinstance(m, Attention)})


class HypernetworkAttnProcessor:
    """diffusers' scaled-dot-product attention with the hypernetwork on the key and value inputs."""

    def __init__(self, hypernetwork: Hypernetwork):
        self.hypernetwork = hypernetwork

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        context_k, context_v = self.hypernetwork.transform(context)
        key, value = attn.to_k(context_k), attn.to_v(context_v)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                       is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def apply_hypernetwork(unet, hypernetwork: Hypernetwork, strength: float = 1.0) -> dict[str, Any]:
    """Route every UNet attention through the hypernetwork; returns the previous processors (to restore)."""
    previous = dict(unet.attn_processors)
    hypernetwork.set_strength(strength)
    hypernetwork.to(unet.device)
    unet.set_attn_processor(HypernetworkAttnProcessor(hypernetwork))
    return previous


def remove_hypernetwork(unet, previous: dict[str, Any]) -> None:
    unet.set_attn_processor(previous)


class HypernetworkTraining:
    """The trained part of a hypernetwork run: the MLP pairs, installed on the frozen UNet's attention."""

    def __init__(self, config, model, device=None):
        self.config, self.model = config, model
        unet = model.pipeline.unet
        name = f"{Path(config.base_model).name}-hypernetwork"
        self.network = Hypernetwork.from_config(config.hypernetwork, attention_widths(unet), name)
        if device is not None:
            self.network.to(device)
        self.network.set_strength(config.hypernetwork.strength)
        unet.set_attn_processor(HypernetworkAttnProcessor(self.network))
        self.trained: dict[str, nn.Module] = {"hypernetwork": self.network}

    def prompt(self, caption: str) -> str:
        return caption

    def after_step(self) -> None:
        pass

    def export(self, output_dir: Path, dataset: dict, started_at: str) -> dict[str, Any]:
        from training.export import sha256_file

        self.network.name = f"{dataset.get('name', 'hypernetwork')}-v{dataset.get('version', 0)}"
        path = self.network.save(Path(output_dir) / f"{self.network.name}.pt", self.config.max_train_steps,
                                 self.model.sha256[:10], Path(self.config.base_model).name)
        return {"hypernetwork": {"path": str(path), "sha256": sha256_file(path), "sizes": self.network.sizes}}
