"""``--init``: start a member from a ferens model's weights instead of random ones.

    >>> from ferens.models.initialise import apply_init, resolve_init
    >>> source = resolve_init("default")        # the shipped model      # doctest: +SKIP
    >>> note = apply_init(model, source, cfg)   # all weights, or all but the head  # doctest: +SKIP

The source is one trained member: a ``train-member`` run folder (its ``best.safetensors``), a
bundle written by ``ferens export`` holding one member, one member of any bundle
(``BUNDLE/members/<i>``), or ``default``, the shipped bundle. A bundle is opened by
``ferens.deploy.bundle.load_bundle`` (checksums and links checked; fp16 weights widened). The
architecture must be the new run's (model, width, input size: the weights' shapes depend on
them); `train-member` takes those fields from the source when they are not given. When the new
data has other classes (names or order), the classifier head starts from fresh weights and
the run's summary says so; otherwise every weight carries over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ferens.config import TrainConfig
from ferens.errors import FerensError

DEFAULT = "default"
# The fields that decide the weights' shapes (and the faces' size): taken from the source.
ARCHITECTURE_FIELDS = ("model", "stem", "width", "input_size")
HINT = ("give a train-member run folder, a bundle folder (one member), BUNDLE/members/<i>, or "
        "default (the shipped model)")


@dataclass
class InitSource:
    """A ferens model to start from: what it is, its config, class names and weights."""

    spec: str
    where: str
    config: TrainConfig
    class_names: tuple[str, ...]
    state: dict[str, torch.Tensor]


def _from_bundle(spec: str, root: Path, index: int | None, where: str) -> InitSource:
    from ferens.deploy.bundle import load_bundle

    bundle = load_bundle(root, torch.device("cpu"))
    members = bundle.members
    if index is None:
        if len(members) != 1:
            raise FerensError(f"--init {spec}: the bundle holds {len(members)} members "
                              f"({', '.join(m.name for m in members)}); --init starts from one: "
                              f"give {root}/members/<i> with i from 0 to {len(members) - 1}")
        index = 0
    if not 0 <= index < len(members):
        raise FerensError(f"--init {spec}: the bundle has members 0 to {len(members) - 1}")
    member = members[index]
    state = {k: v.detach().float() if v.is_floating_point() else v.detach()
             for k, v in member.model.state_dict().items()}
    return InitSource(spec, f"{where} member {index} ({member.name})", member.config,
                      bundle.class_names, state)


def _from_run(spec: str, run: Path) -> InitSource:
    from ferens.io import read_json
    from ferens.models.inference import load_member_model

    kind = read_json(run / "config.json").get("kind")
    if kind in ("ensemble", "adjusted"):
        raise FerensError(f"--init {spec}: is an {kind} run; --init starts from one member: "
                          "give one of its members' run folders (or export it and give "
                          "BUNDLE/members/<i>)")
    weights = run / "best.safetensors"
    if not weights.is_file():
        raise FerensError(f"--init {spec}: the run has no best.safetensors (not finished?)")
    cfg = TrainConfig.load(run / "config.json")
    model = load_member_model(cfg, weights, torch.device("cpu"))
    return InitSource(spec, f"run {run}", cfg, cfg.class_names,
                      {k: v.detach() for k, v in model.state_dict().items()})


def resolve_init(spec: str) -> InitSource:
    """The member ``spec`` names (see the module docstring); one FerensError if it is none."""
    if spec == DEFAULT:
        from ferens.deploy.shipped import default_model_path

        return _from_bundle(spec, default_model_path(), None, "the shipped model")
    path = Path(spec)
    if not path.is_dir():
        raise FerensError(f"--init {spec}: not found; {HINT}")
    if (path / "manifest.json").is_file():
        return _from_bundle(spec, path, None, f"bundle {path}")
    if path.parent.name == "members" and (path.parent.parent / "manifest.json").is_file():
        if not path.name.isdigit():
            raise FerensError(f"--init {spec}: a bundle's members are numbered folders")
        root = path.parent.parent
        return _from_bundle(spec, root, int(path.name), f"bundle {root}")
    if (path / "config.json").is_file():
        return _from_run(spec, path)
    raise FerensError(f"--init {spec}: holds no ferens model (no config.json or manifest.json); "
                      f"{HINT}")


def init_architecture(spec: str) -> dict:
    """The architecture fields of the source, for a run that does not set them itself."""
    cfg = resolve_init(spec).config
    return {key: getattr(cfg, key) for key in ARCHITECTURE_FIELDS}


def _describe(cfg: TrainConfig) -> str:
    return f"{cfg.model} at width {cfg.width} on {cfg.input_size} px faces"


def check_compatible(source: InitSource, cfg: TrainConfig) -> None:
    """The same model, width and input size, else one line saying which differ."""
    theirs, ours = source.config, cfg
    if (theirs.model, theirs.width, theirs.input_size) != (ours.model, ours.width,
                                                           ours.input_size):
        raise FerensError(f"--init {source.spec}: {source.where} is a {_describe(theirs)}, but "
                          f"this run builds a {_describe(ours)}; weights carry over only to the "
                          "same architecture (leave --model, --width and --input-size out to "
                          "take them from it)")


def apply_init(model: nn.Module, source: InitSource, cfg: TrainConfig) -> dict:
    """Load the source's weights into ``model`` (built for ``cfg``); returns the note that
    goes into summary.json: where the weights came from and whether the head was kept."""
    check_compatible(source, cfg)
    head = model.get_classifier()
    head_name = next(name for name, mod in model.named_children() if mod is head)
    head_keys = {k for k in model.state_dict() if k.split(".")[0] == head_name}
    same_classes = tuple(source.class_names) == tuple(cfg.class_names)
    state = dict(source.state)
    if not same_classes:
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - (set() if same_classes else head_keys):
        raise FerensError(f"--init {source.spec}: its weights do not fit this model "
                          f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    note = {"source": source.spec, "from": source.where,
            "source_classes": list(source.class_names),
            "head": "kept" if same_classes else "replaced"}
    if same_classes:
        note["note"] = (f"every weight from {source.where}, the classifier head included (the "
                        f"same {len(cfg.class_names)} classes)")
    else:
        note["note"] = (f"the classifier head was replaced: {source.where} predicts "
                        f"{len(source.class_names)} classes {list(source.class_names)}, this "
                        f"data has {len(cfg.class_names)} {list(cfg.class_names)}; the backbone "
                        "comes from the source, the new head starts from random weights")
    return note
