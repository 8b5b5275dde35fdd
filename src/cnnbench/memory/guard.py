"""What a command will really allocate, known before it allocates: sizes a user types are checked here.

Every size on a command line (``--input-shape``, ``--image-size``, ``--batch-sizes``, ``filters
--size``, an image's own dimensions) ends up as real tensors or arrays somewhere: ``cnnbench info``
builds the model and runs one image through it, the memory prediction calibrates each convolution's
workspace on real data at batch 4 and 8 (:mod:`cnnbench.memory.workspace`), ``--measure`` runs the
step for real, ``train`` checks the model on one image and resizes the whole dataset. The costs are
predicted first on fake tensors (:func:`dry_prediction`: nothing real runs) and compared with the
memory available now (:func:`available_bytes`: ``psutil``'s available memory for the CPU, the free
memory of the CUDA device); above it the command is refused in one line (:func:`check_fits`) naming
both numbers and the flag that goes ahead anyway. Numbers a tensor cannot hold (more than 2**63 - 1
elements) are refused as numbers (:func:`check_elements`).
"""

from __future__ import annotations

from typing import Any

from cnnbench.errors import ConfigError, ModelInputError

INT64_MAX = 2**63 - 1


def available_bytes(device: Any = "cpu") -> int:
    """Bytes that can be allocated now: ``psutil.virtual_memory().available`` on the CPU, the CUDA
    device's free memory (``torch.cuda.mem_get_info``) for a present CUDA device."""
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(device if isinstance(device, torch.device) and device.index is not None
                                               else None)[0])
    import psutil

    free = int(psutil.virtual_memory().available)
    room = cgroup_room()
    return free if room is None else min(free, room)


def cgroup_room() -> int | None:
    """Bytes this process's memory cgroups (v1 or v2, each ancestor too) still allow: limit minus usage,
    not counting inactive file cache, which the kernel reclaims first (as ``docker stats`` counts); None
    without a limit. A container's cap is what OOM-kills, not the host's free memory."""
    from pathlib import Path

    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, limit_file, usage_file, cache_key = Path("/sys/fs/cgroup"), "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            base, limit_file, usage_file, cache_key = (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes",
                                                       "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            folder = base.joinpath(*parts[:depth])
            try:
                limit = (folder / limit_file).read_text().strip()
                usage = int((folder / usage_file).read_text())
                stat = dict(row.split() for row in (folder / "memory.stat").read_text().splitlines() if " " in row)
            except (OSError, ValueError):
                continue
            if limit.isdigit() and int(limit) < 2**60:
                rooms.append(int(limit) - usage + int(stat.get(cache_key, 0)))
    return max(0, min(rooms)) if rooms else None


def show_bytes(count: float) -> str:
    """``25600000000`` -> ``'25,600,000,000 bytes (23.8 GiB)'``."""
    count = int(count)
    unit, scale = ("GiB", 2**30) if count >= 2**30 else ("MiB", 2**20)
    return f"{count:,} bytes ({count / scale:.1f} {unit})"


def check_fits(needed: int, device: Any, what: str, go_ahead: str | None) -> None:
    """Refuse (:class:`~cnnbench.errors.ConfigError`, one line) when ``needed`` bytes exceed what is
    available on ``device``. ``what`` says what would allocate them; ``go_ahead`` names the flag that
    skips this check (or None when there is none: the allocation could not succeed)."""
    free = available_bytes(device)
    if needed <= free:
        return
    where = "on the GPU" if getattr(device, "type", str(device)) == "cuda" else "in memory"
    tail = f"; give {go_ahead} to go ahead anyway" if go_ahead else ""
    raise ConfigError(f"{what} would allocate about {show_bytes(needed)} {where}, but only {show_bytes(free)} is "
                      f"available{tail}")


def check_elements(what: str, *factors: int) -> int:
    """The product of ``factors`` (Python integers), refused when a tensor could not hold it."""
    total = 1
    for factor in factors:
        total *= int(factor)
    if total > INT64_MAX:
        shown = " x ".join(f"{int(f):,}" for f in factors)
        raise ConfigError(f"{what}: {shown} = {total:.3g} elements, beyond the {INT64_MAX:,} a tensor can hold")
    return total


def dry_prediction(model, input_shape: tuple[int, int, int], batch_size: int, optimizer: str, **options: Any):
    """(the prediction without kernel workspaces, the bytes calibrating them would allocate): all on
    fake tensors, nothing real is allocated."""
    from cnnbench.memory.predict import predict, target_device
    from cnnbench.memory.workspace import ConvWorkspace

    check_elements(f"a batch of {batch_size} images of {'x'.join(map(str, input_shape))}", batch_size, *input_shape)
    dry = ConvWorkspace(target_device(options.get("device", "cpu")), dry=True)
    pred = predict(model, tuple(input_shape), batch_size, optimizer, workspace=dry, **options)
    return pred, dry.calibration_peak if dry.enabled else 0


def check_prediction_command(model, input_shape: tuple[int, int, int], batch_sizes: list[int], optimizers: list[str], *,
                             real_model: bool = False, measure: bool = False, budget_mb: float | None = None,
                             go_ahead: str = "--force", **options: Any) -> None:
    """``cnnbench info`` / ``cnnbench memory``: refuse, before anything real is allocated, a command
    whose real allocations exceed the available memory: the workspace calibration (real convolutions
    at batch 4 and 8), with ``real_model`` the model built for real and run on one image (info's
    layer table), with ``measure`` the largest step measured (each batch and optimizer, or the
    ``budget_mb`` a measured search may reach)."""
    from cnnbench.memory.predict import target_device
    from cnnbench.memory.step import MB

    shape = "x".join(map(str, input_shape))
    for batch in batch_sizes:
        check_elements(f"a batch of {batch} images of {shape}", batch, *input_shape)
    try:
        first, calibration = dry_prediction(model, input_shape, 1, optimizers[0], **options)
    except ModelInputError:  # BatchNorm on one value per channel trains from batch 2 (eval runs at 1)
        first, calibration = dry_prediction(model, input_shape, 2, optimizers[0], **options)
    device = target_device(options.get("device", "cpu"))
    on_device = device.type == "cuda" and available_on(device)
    name = model if isinstance(model, str) else type(model).__name__
    calibrating = f"calibrating the convolution workspaces of {name} on {shape} (real convolutions at batch 4 and 8)"
    host, host_what = (0, []) if on_device else (calibration, [calibrating])
    if real_model:
        host += int(first.eval_peak_mb * MB)
        host_what.insert(0, f"building {name} and running one {shape} image through it")
    if host:
        check_fits(host, "cpu", " and ".join(host_what), go_ahead)
    step = 0
    if measure:
        step = max(int(dry_prediction(model, input_shape, b, o, **options)[0].peak_mb * MB)
                   for o in optimizers for b in batch_sizes)
        if budget_mb is not None:
            step = max(step, int(budget_mb * MB))
    if on_device and calibration > step:
        check_fits(calibration, device, calibrating, go_ahead)
    elif step:
        check_fits(step, device, f"--measure (the training step of {name} on {shape} run for real)", go_ahead)


def available_on(device) -> bool:
    import torch

    return getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available()
