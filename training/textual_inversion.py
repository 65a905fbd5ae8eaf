"""Textual inversion: a new pseudo-word whose embedding is learned on a frozen model.

The placeholder token (and, for `num_vectors` > 1, `<tok>_1 … <tok>_{n-1}`, the names diffusers'
`load_textual_inversion` gives them) is added to every tokenizer; its rows of each text encoder's
token embedding start from the initializer word's embedding and are the only rows that change:
the rest of the vocabulary is copied back after every optimizer step (as diffusers'
textual_inversion example does), so weight decay and Adam cannot move them.

Output: one `.safetensors` in the layout AUTOMATIC1111, ComfyUI and kohya read — `emb_params`
(n, dim) for SD 1.x/2.x, `clip_l` (n, 768) + `clip_g` (n, 1280) for SDXL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from store.config_files import ConfigError

FIELD = "textual_inversion"


def vector_tokens(placeholder: str, num_vectors: int) -> list[str]:
    """`<sks>`, `<sks>_1`, … — the names diffusers expands a multi-vector embedding to."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


def check_tokens(options, tokenizers: list) -> None:
    """Fail before training when the placeholder exists already or the initializer is not one token."""
    tokens = vector_tokens(options.placeholder_token, options.num_vectors)
    if not options.placeholder_token.strip() or any(c.isspace() for c in options.placeholder_token):
        raise ConfigError(f"{FIELD}.placeholder_token: {options.placeholder_token!r} must be one word without spaces")
    for tokenizer in tokenizers:
        vocab = tokenizer.get_vocab()
        clash = [t for t in tokens if t in vocab or f"{t}</w>" in vocab]
        if clash:
            raise ConfigError(f"{FIELD}.placeholder_token: {clash[0]!r} is already in the tokenizer's vocabulary; "
                              f"choose a new word (e.g. '<{options.placeholder_token.strip('<>')}-ti>')")
        ids = tokenizer.encode(options.initializer_token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ConfigError(f"{FIELD}.initializer_token: {options.initializer_token!r} is {len(ids)} tokens "
                              f"({', '.join(pieces) or 'none'}) in this tokenizer; choose a word that is one token")


def load_tokenizers(base_path: Path, config_folder: str | None = None) -> list:
    """The base model's tokenizer(s), read from its diffusers folder (or base_model_config for a single file)."""
    from transformers import CLIPTokenizer

    folder = Path(base_path) if Path(base_path).is_dir() else Path(config_folder or "")
    found = [folder / name for name in ("tokenizer", "tokenizer_2") if (folder / name).is_dir()]
    return [CLIPTokenizer.from_pretrained(path) for path in found]


def preflight(config, base_path: Path) -> None:
    """The checks that need only the tokenizer: run by the flow before a run is recorded."""
    tokenizers = load_tokenizers(base_path, config.base_model_config)
    if tokenizers:
        check_tokens(config.textual_inversion, tokenizers)


def insert_token(caption: str, placeholder: str, identifier: str | None, separator: str = ", ") -> str:
    """The caption with the placeholder standing for the subject: replaces the identifier word, else goes first."""
    if not caption or placeholder in caption:
        return caption
    if identifier:
        pattern = rf"(?<![\w<]){re.escape(identifier)}(?![\w>])"
        if re.search(pattern, caption):
            return re.sub(pattern, placeholder, caption)
    return f"{placeholder}{separator}{caption}"


class TextualInversion:
    """The trained part of a textual-inversion run: new token rows in each text encoder."""

    def __init__(self, config, model, device=None):
        self.config, self.model = config, model
        options = config.textual_inversion
        check_tokens(options, model.tokenizers)
        self.tokens = vector_tokens(options.placeholder_token, options.num_vectors)
        self.trained: dict[str, torch.nn.Module] = {}
        self.token_ids: list[list[int]] = []
        self.frozen_rows: list[torch.Tensor] = []  # bool mask of the rows that must not change, per encoder
        self.original: list[torch.Tensor] = []
        done: set[int] = set()
        for index, (tokenizer, encoder) in enumerate(zip(model.tokenizers, model.text_encoders)):
            if id(tokenizer) not in done:  # one tokenizer object may serve both encoders
                tokenizer.add_tokens(self.tokens)
                done.add(id(tokenizer))
            init_id = tokenizer.encode(options.initializer_token, add_special_tokens=False)[0]
            ids = tokenizer.convert_tokens_to_ids(self.tokens)
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            weight = encoder.get_input_embeddings().weight
            with torch.no_grad():
                weight[ids] = weight[init_id].clone()
            weight.requires_grad_(True)
            mask = torch.ones(weight.shape[0], dtype=torch.bool)
            mask[ids] = False
            self.token_ids.append(ids)
            self.frozen_rows.append(mask)
            self.original.append(weight.detach().clone())
            self.trained["text_encoder" if index == 0 else "text_encoder_2"] = encoder

    def prompt(self, caption: str) -> str:
        """A training prompt: the placeholder inserted for the subject, expanded to all its vectors."""
        options = self.config.textual_inversion
        caption = insert_token(caption, options.placeholder_token, self.config.identifier,
                               self.config.caption.tag_separator)
        if len(self.tokens) > 1:
            caption = re.sub(rf"{re.escape(options.placeholder_token)}(?!_\d)", " ".join(self.tokens), caption)
        return caption

    def after_step(self) -> None:
        """Copy the original rows back over everything but the new tokens."""
        with torch.no_grad():
            for encoder, mask, original in zip(self.trained.values(), self.frozen_rows, self.original):
                weight = encoder.get_input_embeddings().weight
                weight[mask] = original[mask].to(weight.device, weight.dtype)

    def vectors(self) -> list[torch.Tensor]:
        """(num_vectors, dim) per text encoder, float32 on CPU."""
        return [encoder.get_input_embeddings().weight[ids].detach().float().cpu().contiguous()
                for encoder, ids in zip(self.trained.values(), self.token_ids)]

    def export(self, output_dir: Path, dataset: dict, started_at: str) -> dict[str, Any]:
        from safetensors.torch import save_file

        from training.export import sha256_file

        options = self.config.textual_inversion
        vectors = self.vectors()
        tensors = {"emb_params": vectors[0]} if self.model.family != "sdxl" else \
            {"clip_l": vectors[0], "clip_g": vectors[1]}
        # A1111 and ComfyUI use the file name as the prompt word
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "", options.placeholder_token) or "embedding"
        path = Path(output_dir) / f"{stem}.safetensors"
        meta = {"atelier_method": "textual_inversion", "placeholder_token": options.placeholder_token,
                "num_vectors": str(options.num_vectors), "initializer_token": options.initializer_token,
                "sd_checkpoint": self.model.sha256[:10], "sd_checkpoint_name": Path(self.config.base_model).name,
                "step": str(self.config.max_train_steps), "atelier_dataset": dataset.get("name", ""),
                "atelier_dataset_version": str(dataset.get("version", "")), "modelspec.date": started_at}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return {"embedding": {"path": str(path), "sha256": sha256_file(path), "token": options.placeholder_token,
                              "num_vectors": options.num_vectors}}


def load_into_pipeline(pipe, path: str | Path, token: str) -> None:
    """Load an exported embedding with diffusers' own loader (both encoders for SDXL)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if "clip_g" in state:
        pipe.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
        pipe.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                    tokenizer=pipe.tokenizer_2)
    else:
        pipe.load_textual_inversion(str(path), token=token)
