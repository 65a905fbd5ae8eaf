"""The training loop, top to bottom: data → model → loop → checkpoints → exports.

`run_training(config, data_dir, output_dir)` trains LoRA, DreamBooth, DreamBooth-LoRA, textual inversion
or a hypernetwork (training/textual_inversion.py, training/hypernetwork.py) on a
kohya-layout folder and returns a result dict (metrics + outputs). It runs in-process; the flow
starts it in a subprocess through `python -m training.run` so a crash cannot take the flow down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training import data as D
from training import determinism, distributed
from training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainConfig
from training.export import share_readable
from training.masks import LossMasks, weighted_mse
from training.metadata import RunFacts, epochs_spanned
from training.models import load_base_model
from training.optimizers import build_optimizer
from training.vae import swap_vae


def method_for(config: TrainConfig, model, device):
    """The trained part of a method that is not LoRA/DreamBooth (None for those): trained modules, prompt, export."""
    if config.method == "textual_inversion":
        from training.textual_inversion import TextualInversion

        return TextualInversion(config, model, device)
    if config.method == "hypernetwork":
        from training.hypernetwork import HypernetworkTraining

        return HypernetworkTraining(config, model, device)
    return None


@contextmanager
def eval_mode(modules: dict[str, torch.nn.Module]):
    """Trained modules in eval mode (no dropout) for validation samples, back to train mode after."""
    for module in modules.values():
        module.eval()
    try:
        yield
    finally:
        for module in modules.values():
            module.train()


def encode_prompts(model, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Text-encoder hidden states (SDXL: both encoders' penultimate layers, concatenated) and SDXL's pooled embeds."""
    states, pooled = [], None
    for tokenizer, encoder in zip(model.tokenizers, model.text_encoders):
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        if model.family != "sdxl":
            return encoder(ids)[0], None
        out = encoder(ids, output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def sdxl_time_ids(examples: list[D.Example], bucket: tuple[int, int], device) -> torch.Tensor:
    """(original h, w, crop top, left, target h, w) per example — SDXL's size and crop conditioning."""
    rows = []
    for example in examples:
        _, (top, left) = D.cover_crop(example.size, bucket)
        rows.append([example.size[1], example.size[0], top, left, bucket[1], bucket[0]])
    return torch.tensor(rows, dtype=torch.float32, device=device)


def diffusion_loss(model, unet, scheduler, config: TrainConfig, latents, prompts, examples, bucket,
                   generators: list[torch.Generator], device, autocast, weights=None) -> torch.Tensor:
    """Noise the latents at random timesteps, predict, and return the (mask- and min-SNR-weighted) MSE.

    weights: (B, 1, h, w) per-latent-cell loss weights (training/masks.py), None for none.

    generators: one per sample (its noise, offset and timestep), so a sample's draws do not depend on the batch.
    """
    from diffusers.training_utils import compute_snr

    noise = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
    if config.noise_offset:
        noise += config.noise_offset * torch.stack([torch.randn((latents.shape[1], 1, 1), generator=g) for g in generators])
    timesteps = torch.cat([torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=g) for g in generators])
    latents, noise, timesteps = latents.to(device), noise.to(device), timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with autocast():
        hidden, pooled = encode_prompts(model, prompts, device)
        kwargs = {}
        if model.family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": sdxl_time_ids(examples, bucket, device)}
        pred = unet(noisy, timesteps, hidden, **kwargs).sample
    target = scheduler.get_velocity(latents, noise, timesteps) if scheduler.config.prediction_type == "v_prediction" else noise
    loss = weighted_mse(pred, target, weights)
    if config.snr_gamma is None:
        return loss.mean()
    snr = compute_snr(scheduler, timesteps)
    snr_weights = torch.stack([snr, config.snr_gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    snr_weights = snr_weights / snr if scheduler.config.prediction_type == "epsilon" else snr_weights / (snr + 1)
    return (loss * snr_weights).mean()


def run_training(config: TrainConfig, data_dir: Path, output_dir: Path, *, dataset: dict[str, Any] | None = None,
                 cache_dir: Path | None = None, stop_at_step: int | None = None, resume: bool = True,
                 base_model=None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and export; `stop_at_step` stops early after a checkpoint (used to test resume).

    base_model: an already resolved store.registry.ResolvedModel (else config.base_model is resolved here).
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, cast_training_params

    output_dir, dataset = Path(output_dir), dataset or {}
    output_dir.mkdir(parents=True, exist_ok=True)
    if cache_dir is None:
        from store.settings import load_settings
        cache_dir = load_settings().cache_dir
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    notes: list[str] = []

    # --- device, processes and precision ---------------------------------------------------
    processes = distributed.start(config.num_processes)  # rank 0 alone logs and writes (training/distributed.py)
    device, log = processes.device, log if processes.is_main else (lambda line: None)
    weight_dtype = torch.float32
    if config.mixed_precision != "no" and device.type != "cuda":
        notes.append(f"mixed_precision={config.mixed_precision} asked for, but there is no GPU: training in fp32 on CPU")
    elif config.mixed_precision != "no":
        weight_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16

    def autocast():
        return torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32)

    # --- model ----------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    model = load_base_model(config.base_model, config.base_model_config, config.model_family, resolved=base_model)
    chosen_vae = swap_vae(model.pipeline, config.vae)  # None: the base model's own VAE
    pipe, unet, vae = model.pipeline, model.pipeline.unet, model.pipeline.vae
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    for encoder in model.text_encoders:
        encoder.requires_grad_(False)
    trained: dict[str, torch.nn.Module] = {"unet": unet}
    method = method_for(config, model, device)  # textual inversion / hypernetwork: their own trained parts
    if method is not None:  # pivotal tuning: the new tokens and a UNet LoRA together
        trained = {"unet": unet, **method.trained} if config.uses_lora else method.trained
    if config.uses_lora:  # LoRA, LoCon, LoHa, LoKr or DoRA
        from training.adapters import add_network

        add_network(config, model, trained, device)
    elif method is None:
        unet.requires_grad_(True)
        if config.train_text_encoder:
            model.text_encoders[0].requires_grad_(True)
            trained["text_encoder"] = model.text_encoders[0]
    vae.to(device)  # fp32: it encodes once per image (cached), and SD's VAE overflows in fp16
    for module in (unet, *model.text_encoders):
        module.to(device)
        fully_trained = any(module is m for m in trained.values()) and \
            (not config.uses_lora or (method is not None and module is not unet))  # TI embeddings stay fp32
        if weight_dtype != torch.float32 and not fully_trained:
            module.to(dtype=weight_dtype)  # frozen weights in half precision; trained ones stay fp32
    if config.uses_lora:
        cast_training_params(list(trained.values()), dtype=torch.float32)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    for module in trained.values():
        module.train()

    # --- data -----------------------------------------------------------------------------
    examples = D.scan_kohya_folder(Path(data_dir), config.repeats)
    if config.enable_bucket:
        bucket_list = D.make_buckets(config.resolution, config.bucket_reso_steps, config.min_bucket_reso, config.max_bucket_reso)
        buckets = {i: D.assign_bucket(e.size, bucket_list) for i, e in enumerate(examples)}
    else:
        buckets = {i: (config.resolution, config.resolution) for i in range(len(examples))}
    latents_cache = D.LatentCache(Path(cache_dir) / "latents", vae, chosen_vae.sha256 if chosen_vae else model.sha256,
                                  device, torch.float32)
    loss_masks = LossMasks(config, examples, Path(data_dir), Path(cache_dir) / "latents", log)
    global_batch = config.train_batch_size * processes.count
    epoch_length = len(D.epoch_batches(examples, buckets, global_batch, config.seed, 0))
    class_examples: list[D.Example] = []
    if config.prior.enabled:
        from training.aesthetic_gradients import load_aesthetic
        from training.prior import class_images_folder, ensure_class_images

        if not (config.prior.class_prompt or config.class_word):
            raise ValueError("prior.enabled needs prior.class_prompt or class_word (or a dataset with a class word)")
        prompt = config.prior.class_prompt or f"a photo of {config.class_word}"
        folder = Path(config.prior.class_data_dir) if config.prior.class_data_dir else \
            class_images_folder(cache_dir, model.sha256, prompt, config.resolution, config.aesthetic_settings)
        with autocast(), distributed.main_first(processes):
            paths = ensure_class_images(pipe, folder, prompt, config.prior.num_class_images, config.resolution,
                                        batch_size=config.prior.sample_batch_size, steps=config.prior.num_inference_steps,
                                        seed=config.seed, log=log, aesthetic=load_aesthetic(config))
        class_examples = [D.Example(p, D.file_sha256(p), prompt, 1, "class", (config.resolution,) * 2) for p in paths]
    log(f"data: {len(examples)} images, {len(set(buckets.values()))} buckets, {epoch_length} batches per epoch; "
        f"device {device}, weights {str(weight_dtype).removeprefix('torch.')}"
        + (f"; {processes.count} processes, global batch {global_batch}" if processes.distributed else ""))
    for note in notes:
        log(f"note: {note}")

    # --- optimiser, schedule, EMA ---------------------------------------------------------
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": config.learning_rate}]
    for name, module in trained.items():
        if name != "unet":
            lr = config.text_encoder_lr if name.startswith("text_encoder") and config.text_encoder_lr else config.learning_rate
            groups.append({"params": [p for p in module.parameters() if p.requires_grad], "lr": lr})
    groups = [g for g in groups if g["params"]]  # textual inversion / hypernetwork leave the UNet frozen
    optimizer, optimizer_name = build_optimizer(config, groups, notes)  # training/optimizers.py
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.max_train_steps)
    scaler = torch.amp.GradScaler(device.type) if weight_dtype == torch.float16 else None
    trainable = [p for g in groups for p in g["params"]]
    ema = EMAModel(trainable, decay=config.ema_decay) if config.use_ema else None

    # --- resume ---------------------------------------------------------------------------
    start_step, loss_history = 0, []
    checkpoints = output_dir / "checkpoints"
    if resume and (found := latest_checkpoint(checkpoints)):
        state = load_checkpoint(found, trained, optimizer, lr_scheduler, scaler, ema)
        start_step, loss_history = state["step"], state.get("loss_history", [])
        log(f"resumed from {found.name} at step {start_step}")
    distributed.broadcast_parameters(trainable, processes)

    writer = None
    if config.report_to == "tensorboard" and processes.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output_dir / "logs"))

    # --- loop -----------------------------------------------------------------------------
    samples: list[dict] = []
    timed_steps, started = 0, time.perf_counter()
    first_step_done = started
    epoch_cache: dict[int, list[list[int]]] = {}
    for step in range(start_step, config.max_train_steps):
        total = 0.0
        for micro in range(config.gradient_accumulation_steps):
            index = step * config.gradient_accumulation_steps + micro
            epoch, position = divmod(index, epoch_length)
            if epoch not in epoch_cache:
                epoch_cache = {epoch: D.epoch_batches(examples, buckets, global_batch, config.seed, epoch)}
            ids = epoch_cache[epoch][position]  # the global batch; this process trains on its shard
            mine = distributed.shard(ids, config.train_batch_size, processes)
            if not mine:  # the short last batch of a bucket left nothing for this rank
                continue
            batch, bucket = [examples[ids[j]] for j in mine], buckets[ids[0]]
            generators = distributed.sample_generators(config.seed, step, micro, mine, "noise")
            rngs = distributed.sample_rngs(config.seed, step, micro, mine, "caption")
            latents = torch.stack([D.sample_latents(latents_cache.get(e, bucket)[None], g)[0] for e, g in zip(batch, generators)])
            latents = latents * vae.config.scaling_factor
            prompts = [D.build_caption(e.caption, config, r) for e, r in zip(batch, rngs)]
            if method is not None:
                prompts = [method.prompt(p) for p in prompts]
            weights = loss_masks.weights(batch, bucket, tuple(latents.shape[-2:]))
            loss = diffusion_loss(model, unet, scheduler, config, latents, prompts, batch, bucket, generators, device,
                                  autocast, weights)
            if class_examples:
                chosen = [class_examples[(index * len(ids) + j) % len(class_examples)] for j in mine]
                size = (config.resolution, config.resolution)
                prior_generators = distributed.sample_generators(config.seed, step, micro, mine, "prior")
                prior_latents = torch.stack([D.sample_latents(latents_cache.get(e, size)[None], g)[0]
                                             for e, g in zip(chosen, prior_generators)])
                prior = diffusion_loss(model, unet, scheduler, config, prior_latents * vae.config.scaling_factor,
                                       [e.caption for e in chosen], chosen, size, prior_generators, device, autocast)
                loss = loss + config.prior.prior_loss_weight * prior
            loss = loss * (len(mine) / len(ids)) / config.gradient_accumulation_steps  # shard's share of the global mean
            (scaler.scale(loss) if scaler else loss).backward()
            total += loss.item()
        total = distributed.sum_value(total, processes)
        distributed.sum_gradients(trainable, processes)
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if method is not None:
            method.after_step()  # textual inversion: the rest of the vocabulary back to the original
        if ema:
            ema.step(trainable)
        done = step + 1
        timed_steps += 1
        if timed_steps == 1:  # the first step also encodes latents and warms kernels up
            first_step_done = time.perf_counter()
        loss_history.append(total)
        if writer:
            writer.add_scalar("train/loss", total, done)
            writer.add_scalar("train/lr", lr_scheduler.get_last_lr()[0], done)
        if done % 10 == 0 or done == config.max_train_steps or done == start_step + 1:
            log(f"step {done}/{config.max_train_steps} loss {total:.4f} lr {lr_scheduler.get_last_lr()[0]:.2e}")
        if config.validation_steps and config.validation_prompts and done % config.validation_steps == 0 and processes.is_main:
            with eval_mode(trained):
                samples += validation_samples(pipe, config, output_dir, done, device, autocast)
        if (done % config.checkpointing_steps == 0 or done == stop_at_step) and processes.is_main:
            save_checkpoint(checkpoints, done, trained, optimizer, lr_scheduler, scaler, ema,
                            {"loss_history": loss_history}, keep=config.checkpoints_total_limit)
        if done == stop_at_step:
            log(f"stopped at step {done} as asked (stop_at_step)")
            return {"status": "stopped", "step": done}
    seconds = time.perf_counter() - started
    steady = (time.perf_counter() - first_step_done) / (timed_steps - 1) if timed_steps > 1 else seconds

    # --- outputs --------------------------------------------------------------------------
    if not processes.is_main:
        return {"status": "succeeded", "rank": processes.rank}
    if ema:
        ema.copy_to(trainable)
    for module in trained.values():
        module.eval()
    if config.validation_prompts:
        samples += validation_samples(pipe, config, output_dir, config.max_train_steps, device, autocast)
    outputs = method.export(output_dir, dataset, started_at) if method is not None else {}
    if method is None or config.uses_lora:  # pivotal tuning writes the embedding and the LoRA
        accumulated = config.max_train_steps * config.gradient_accumulation_steps
        facts = RunFacts(datetime.fromisoformat(started_at).timestamp(), config.max_train_steps,
                         epochs_spanned(config.max_train_steps, config.gradient_accumulation_steps, epoch_length),
                         (accumulated - 1) // epoch_length + 1, epoch_length, optimizer_name,
                         {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(weight_dtype, "no"), buckets,
                         bucket_list if config.enable_bucket else [], len(class_examples), dataset.get("run_id"))
        outputs.update(export_outputs(config, model, examples, output_dir, dataset, facts, trained, chosen_vae,
                                      loss_masks.metadata()))
    share_readable(outputs)  # mode 0644: ComfyUI or A1111 running as another user reads them
    if chosen_vae:
        outputs["vae"] = chosen_vae.record()
    outputs["samples"] = samples
    tail = loss_history[-max(1, len(loss_history) // 10):]
    head = loss_history[: max(1, len(loss_history) // 10)]
    metrics = {
        "steps": config.max_train_steps, "first_loss": sum(head) / len(head), "final_loss": sum(tail) / len(tail),
        "loss_history": loss_history[:: max(1, len(loss_history) // 50)],
        "seconds_per_step": seconds / max(1, timed_steps), "seconds_per_step_steady": steady,
        "images": len(examples), "device": device.type, "processes": processes.count, "global_batch_size": global_batch,
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "latent_cache": {"hits": latents_cache.hits, "misses": latents_cache.misses}, "notes": notes,
        "masked_loss": loss_masks.summary(),
        "optimizer": optimizer_name, "determinism": determinism.current(),
    }
    if writer:
        writer.close()
    result = {"status": "succeeded", "family": model.family, "base_model_hash": model.sha256,
              "metrics": metrics, "outputs": outputs}
    (output_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def validation_samples(pipe, config: TrainConfig, output_dir: Path, step: int, device, autocast) -> list[dict]:
    """Fixed prompts × fixed seeds → PNGs under samples/step-N/; returns [{path, prompt, seed, step}]."""
    from training.aesthetic_gradients import load_aesthetic
    from training.export import sha256_file

    folder = output_dir / "samples" / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    pipe.to(device)
    aesthetic = load_aesthetic(config)
    for p_index, prompt in enumerate(config.validation_prompts):
        text = {"prompt_embeds": aesthetic.prompt_embeds(pipe, prompt)} if aesthetic else {"prompt": prompt}
        for seed in config.validation_seeds:
            with torch.no_grad(), autocast():  # half-precision frozen weights beside fp32 LoRA and VAE
                image = pipe(**text, num_inference_steps=config.validation_inference_steps, height=config.resolution,
                             width=config.resolution, generator=torch.Generator().manual_seed(seed)).images[0]
            path = folder / f"{p_index:02d}-seed{seed}.png"
            image.save(path)
            rows.append({"path": str(path), "sha256": sha256_file(path), "prompt": prompt, "seed": seed, "step": step,
                         **({"aesthetic": config.aesthetic_settings} if aesthetic else {})})
    return rows


def export_outputs(config: TrainConfig, model, examples, output_dir: Path, dataset: dict, facts: RunFacts,
                   trained: dict[str, torch.nn.Module], chosen_vae=None,
                   extra_metadata: dict[str, str] | None = None) -> dict:
    from training import adapters, export
    from training.metadata import lora_metadata

    pipe = model.pipeline
    outputs: dict[str, Any] = {}
    if config.uses_lora:
        meta = lora_metadata(config, model.family, model.path, model.sha256, dataset, examples, D.tag_frequency(examples),
                             facts, v_prediction=pipe.scheduler.config.get("prediction_type") == "v_prediction",
                             vae=chosen_vae)
        meta.update(extra_metadata or {})  # ss_masked_loss
        name = f"{meta['ss_output_name']}.safetensors"  # unique per run: A1111 lists LoRAs by this name
        if adapters.is_lycoris(trained):  # LoCon/LoHa/LoKr/DoRA: one LyCORIS-layout file, which diffusers reads too
            outputs["lora"] = adapters.save_network_kohya(output_dir / name, trained, model.family, pipe.unet, meta)
            if config.network == "dora" and config.dora_wd_on_output:  # diffusers drops a kohya file's dora_scale
                outputs["lora_peft"] = adapters.save_dora_peft(output_dir / "lora_peft", trained, pipe)
            return outputs
        layers = export.lora_layers(pipe.unet, model.text_encoders)
        outputs["lora"] = export.save_lora_kohya(output_dir / name, layers, config.alpha, model.family, meta,
                                                 unet_config=pipe.unet.config)
        outputs["lora_peft"] = export.save_lora_peft(output_dir / "lora_peft", type(pipe), layers, config.alpha, config.rank)
    else:
        pipe.to(torch.float32)
        outputs.update(export.save_dreambooth(output_dir, pipe, model.family))
    return outputs
