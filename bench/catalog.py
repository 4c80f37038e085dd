"""What `bench list` shows: cards and registry entries with their availability."""

from __future__ import annotations

from pathlib import Path


def list_rows(kind: str, pattern: str = "*", data_root: Path | None = None) -> tuple[list[tuple], list[str]]:
    import fnmatch

    from .config import ConfigError, find_cards, load_card_dict
    from .data import resolve_data_root
    from .registry import DATASETS, METHODS, METRICS, NETWORKS, RegistryError

    if kind == "methods":
        rows = []
        for name, path in sorted(find_cards("methods").items()):
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            try:
                card = load_card_dict(path, "methods")
                impl = card.get("impl", "?")
                avail = METHODS.entry(impl).availability()
                if avail == "ok":  # the method's own check sees its card's params (a weights path)
                    from .config import validate

                    cls = METHODS.get(impl)
                    params = validate(cls.Params, card.get("params") or {}, f"method card {name!r}", "method.params.")
                    avail = cls.availability(params) or "ok"
                desc = card.get("description") or METHODS.entry(impl).description
            except (ConfigError, RegistryError) as exc:
                impl, avail, desc = "?", f"broken card: {exc}", ""
            rows.append((name, impl, desc, avail))
        return rows, ["name", "implementation", "description", "availability"]
    if kind == "datasets":
        root = resolve_data_root(data_root)
        rows = []
        for name, path in sorted(find_cards("datasets").items()):
            if not fnmatch.fnmatchcase(name, pattern):
                continue
            card = load_card_dict(path, "datasets")
            generated = "root" in card and card["root"] is None
            where = root / (card.get("root") or name)
            try:
                avail = DATASETS.entry(card.get("reader", "?")).availability()
            except RegistryError as exc:
                avail = f"broken card: {exc}"
            if avail == "ok" and not generated and not where.exists():
                avail = f"not downloaded ({where}; `bench data fetch {name}`)"
            rows.append((name, card.get("task", "?"), f"{card.get('ndim', 2)}D", card.get("description", ""), avail))
        return rows, ["name", "task", "dim", "description", "availability"]
    from .registry import TARGETS

    registries = {"metrics": METRICS, "networks": NETWORKS, "targets": TARGETS}
    if kind not in registries:
        raise ValueError(f"unknown kind {kind!r}: choose methods, datasets, metrics, networks or targets")
    reg = registries[kind]
    rows = []
    for name in reg.names(pattern):
        e = reg.entry(name)
        task = e.extra.get("task")
        task = ", ".join(task) if isinstance(task, (list, tuple)) else (task or "")
        rows.append((name, task, e.description, e.availability()) if kind == "metrics"
                    else (name, e.description, e.availability()))
    cols = ["name", "task", "description", "availability"] if kind == "metrics" else ["name", "description", "availability"]
    return rows, cols
