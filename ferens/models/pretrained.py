"""timm's published weights by name (``--pretrained timm`` or ``timm:TAG``), never downloaded.

    >>> from ferens.models.pretrained import create_timm_pretrained
    >>> model = create_timm_pretrained("resnet18", "timm:a1_in1k", num_classes=7)  # doctest: +SKIP

timm names each set of weights ``ARCH.TAG`` (``resnet18.a1_in1k``) and keeps them on the
Hugging Face Hub (``timm/resnet18.a1_in1k``), some also at an old URL. ferens looks for a copy
already on this machine, in the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``~/.cache/huggingface/hub``) and in torch's hub cache (``$TORCH_HOME/hub/checkpoints``),
and hands the file to timm (``pretrained_cfg_overlay=dict(file=...)``): timm itself sums the
RGB first conv to one channel and drops an ImageNet head of another class count. Nothing here
touches the network, so an offline machine never hangs on a download; with no copy, one line
says where it looked and how to provide one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ferens.errors import FerensError

TIMM_PREFIX = "timm"
# The files timm's Hub loader reads, in its order of preference (timm.models._hub).
HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def is_timm_spec(spec: str | Path | None) -> bool:
    """True for ``timm`` and ``timm:TAG`` (a weights file named so is given as ./timm)."""
    return isinstance(spec, str) and (spec == TIMM_PREFIX or spec.startswith(TIMM_PREFIX + ":"))


def pretrained_name(model: str, spec: str) -> str:
    """The timm ``ARCH.TAG`` a spec names: ``timm`` = timm's default tag for ``model``."""
    import timm
    from timm.models import get_pretrained_cfg

    tag = spec.partition(":")[2].strip()
    if tag.startswith(model + "."):  # timm:resnet18.a1_in1k is accepted too
        tag = tag[len(model) + 1:]
    if not tag:
        cfg = get_pretrained_cfg(model)
        if cfg is None or not cfg.tag:
            raise FerensError(f"--pretrained {spec}: timm publishes no weights for {model}")
        tag = cfg.tag
    name = f"{model}.{tag}"
    if name not in timm.list_pretrained(model + ".*"):
        known = ", ".join(t.partition(".")[2] for t in timm.list_pretrained(model + ".*"))
        raise FerensError(f"--pretrained {spec}: timm has no weights {name!r}; its tags for "
                          f"{model}: {known or 'none'}")
    return name


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME")
                                             or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def torch_hub_checkpoints() -> Path:
    """torch's hub cache of downloaded checkpoints (what timm's URL loader used)."""
    home = os.environ.get("TORCH_HOME") or Path(os.environ.get("XDG_CACHE_HOME")
                                                or Path.home() / ".cache") / "torch"
    return Path(home) / "hub" / "checkpoints"


def find_cached_weights(name: str) -> tuple[Path | None, list[str]]:
    """A local copy of timm's weights ``name`` and the places looked in (for the message)."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    looked = []
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HUB_FILES
        cache = hf_cache_dir()
        looked.append(str(cache / f"models--{repo.replace('/', '--')}"))
        for file in files:
            found = try_to_load_from_cache(repo, file, cache_dir=cache)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found), looked
    if cfg.url:
        old = torch_hub_checkpoints() / os.path.basename(cfg.url.split("?")[0])
        looked.append(str(old))
        if old.is_file():
            return old, looked
    return None, looked


def missing_weights_message(spec: str, name: str, looked: list[str]) -> str:
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(name).hf_hub_id
    fetch = (f"on a machine with internet run `hf download {repo}` (huggingface_hub) and copy "
             f"its cache folder models--{repo.replace('/', '--')} into {hf_cache_dir()} (or "
             f"point HF_HUB_CACHE at a copy), or download "
             f"https://huggingface.co/{repo}/resolve/main/model.safetensors and pass "
             f"--pretrained PATH/model.safetensors") if repo else (
             "download the file and pass --pretrained PATH")
    return (f"--pretrained {spec}: timm's weights {name} are not on this machine (looked in "
            f"{' and '.join(looked) or 'no cache: timm lists no source'}); ferens never "
            f"downloads: {fetch}")


def create_timm_pretrained(model: str, spec: str, num_classes: int, drop_rate: float = 0.0,
                           **kwargs):
    """``timm.create_model(model, pretrained=True, in_chans=1, num_classes=...)`` from the local
    copy of the weights ``spec`` names; one FerensError when there is none."""
    import timm

    name = pretrained_name(model, spec)
    file, looked = find_cached_weights(name)
    if file is None:
        raise FerensError(missing_weights_message(spec, name, looked))
    try:
        return timm.create_model(name, pretrained=True, in_chans=1, num_classes=num_classes,
                                 drop_rate=drop_rate,
                                 pretrained_cfg_overlay={"file": str(file)}, **kwargs)
    except Exception as exc:  # a damaged or foreign file: timm raises RuntimeError & co
        raise FerensError(f"{file}: cannot load timm's weights {name} from it "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
