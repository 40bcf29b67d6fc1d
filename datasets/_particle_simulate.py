r"""The restartable simulator of :mod:`gtlib.datasets.particles`: :func:`simulate` and its
checkpoint (snapshot bytes in ``out + ".partial"``, integrator state in the sidecar
``out + ".partial.state"``, cross-checked on resume)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gtlib.datasets._particle_io import _check_path, _write_trajectory, load_trajectory
from gtlib.datasets._particle_neighbours import _NeighbourCache
from gtlib.datasets._particle_systems import (
    ActiveBrownianParticles,
    ActiveOUParticles,
    ParticleSystem,
    _SoftDiscs,
)
from gtlib.io import atomic_torch_save, remove_stale_temporaries
from gtlib.validation import check_device, check_int, check_real

__all__ = ["blob_state", "simulate"]

# Default Verlet skin of the simulator, in units of r0 (fastest in timings at phi = 0.55).
DEFAULT_SKIN = 0.5


def _initial_positions(
    system: _SoftDiscs, batch: int, generator: torch.Generator, dtype: torch.dtype
) -> Tensor:
    """Jittered lattice: ``N`` random sites of a cubic lattice filling the box (free space: of
    spacing ``2.5 r0`` around the origin), each moved by up to ``5%`` of the spacing."""
    n, d = system.num_particles, system.dim
    per_side = math.ceil(n ** (1.0 / d) - 1e-9)
    if system.box_length is not None:
        spacing = system.box_length / per_side
        origin = -0.5 * system.box_length + 0.5 * spacing
    else:
        spacing = 2.5 * system.r0
        origin = -0.5 * spacing * (per_side - 1)
    axes = [torch.arange(per_side, dtype=dtype) for _ in range(d)]
    sites = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)
    out = []
    for _ in range(batch):
        chosen = sites[torch.randperm(sites.shape[0], generator=generator)[:n]]
        jitter = 0.1 * (torch.rand(n, d, generator=generator, dtype=dtype) - 0.5)
        out.append(origin + spacing * (chosen + jitter))
    return system.wrap(torch.stack(out))


def blob_state(
    system: _SoftDiscs, seed: int = 0, n_trajectories: int | None = None, std: float = 0.25
) -> tuple[Tensor, Tensor]:
    r"""An initial state ``(pos, g)`` for :func:`simulate` (``initial=``): positions from an
    isotropic Gaussian of standard deviation ``std * L`` about the centre of the periodic box
    (side ``L``), wrapped into it, and ``g`` from its stationary law :math:`\mathcal N(0, I)`,
    float64. With ``std = 1/4`` this is the dense start of the MIPS paper's data generator
    (Boffi & Vanden-Eijnden; for packing fractions of at least 0.25): at its motility-induced
    phase separation point a blob grows into the dense phase instead of nucleating it.

    Args:
        system: a particle system with a periodic box.
        seed: seeds the ``torch.Generator`` the draws come from (trajectory after trajectory:
            positions, then ``g``); take another seed than :func:`simulate`'s, whose noise
            would otherwise start with the same numbers.
        n_trajectories: ``B`` states ``[B, N, d]``, or one state ``[N, d]`` (``None``).
        std: the blob's standard deviation in units of the box side, ``> 0``.

    Shapes:
        pos, g: ``[N, d]``, or ``[B, N, d]`` with ``n_trajectories``.
    """
    if system.box_length is None:
        raise ValueError("blob_state needs a system in a periodic box (box_length)")
    seed = check_int(seed, "seed", minimum=-(2**63), maximum=2**64 - 1)
    std = check_real(std, "std", positive=True)
    count = 1 if n_trajectories is None else check_int(n_trajectories, "n_trajectories", minimum=1)
    n, d = system.num_particles, system.dim
    generator = torch.Generator().manual_seed(seed)
    pos, g = [], []
    for _ in range(count):
        pos.append(std * system.box_length * torch.randn(n, d, generator=generator,
                                                         dtype=torch.float64))  # fmt: skip
        g.append(torch.randn(n, d, generator=generator, dtype=torch.float64))
    pos, g = system.wrap(torch.stack(pos)), torch.stack(g)
    return (pos[0], g[0]) if n_trajectories is None else (pos, g)


def _run_signature(system: _SoftDiscs, settings: _Settings, initial_hash: str) -> str:
    """What makes two runs the same (JSON): the system, the schedule, the seed, the dtype and
    the initial state."""
    return json.dumps(
        {
            "system": type(system).__name__,
            "parameters": system.parameters(),
            "dt": settings.dt,
            "seed": settings.seed,
            "n_snapshots": settings.n_snapshots,
            "n_trajectories": settings.batch,
            "burn_steps": settings.burn_steps,
            "spacing_steps": settings.spacing_steps,
            "dtype": str(settings.dtype),
            "initial": initial_hash,
            # another device draws other random numbers: a run there is another run (a CPU
            # run's signature is unchanged from before devices existed)
            **({} if settings.device.type == "cpu" else {"device": _device_name(settings)}),
        },
        sort_keys=True,
    )


def _device_name(settings: _Settings) -> str:
    """The device type and, for CUDA, the GPU model: ``randn`` lays its numbers out by the
    model's multiprocessor count, so another model draws another realisation."""
    if settings.device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(settings.device)})"
    return settings.device.type


_CHECKPOINT_FORMAT = "gtlib.datasets.simulate/2"


def _run_files(path: str) -> tuple[str, str]:
    """The snapshot file and the integrator-state sidecar of an unfinished run of ``path``."""
    return path + ".partial", path + ".partial.state"


def _discard_run_files(path: str) -> None:
    """Remove what an unfinished run of ``path`` left: snapshots, sidecar, stale temporaries."""
    for name in (path, *_run_files(path)):
        remove_stale_temporaries(name)
    for name in _run_files(path):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


def _snapshot_bytes(all_pos: Tensor, all_g: Tensor, start: int, stop: int) -> bytes:
    """Snapshots ``start:stop`` as raw bytes, per snapshot ``pos`` then ``g`` (C order)."""
    return b"".join(
        all_pos[s].numpy().tobytes() + all_g[s].numpy().tobytes() for s in range(start, stop)
    )


def _append_snapshots(path: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the snapshot file, drop what lies beyond (bytes of a write
    the last checkpoint does not cover) and flush it to disk before the sidecar records it."""
    with open(path, "r+b" if os.path.exists(path) else "wb") as handle:
        handle.seek(offset)
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (torch.load checks no CRC: a flipped bit would load)."""
    digest = hashlib.sha256()
    for key in ("format", "run_signature", "step", "n_done", "snapshot_bytes", "snapshot_sha256"):
        digest.update(f"{key}={state.get(key)!r}\n".encode())
    for key in ("pos", "g", "generator_state"):
        value = state.get(key)
        if isinstance(value, Tensor):
            digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}\n".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(f"{key}:{type(value).__name__}\n".encode())
    return digest.hexdigest()


def _checkpoint_error(sidecar: str, problem: str) -> ValueError:
    return ValueError(
        f"{sidecar}: {problem}; the checkpoint of this unfinished run is inconsistent (delete "
        "it or pass resume=False to start over)"
    )


def _read_checkpoint(
    path: str,
    signature: str,
    snapshot_shape: tuple[int, ...],
    dtype: torch.dtype,
    snapshot_steps: Sequence[int],
) -> dict[str, Any]:
    """Load and cross-check the checkpoint of an unfinished run of ``path`` (``{}``: none).

    The sidecar (written atomically) is the truth: its step must match its snapshot count under
    the run's schedule, and the snapshot file must hold at least the bytes it records, with the
    recorded SHA-256; bytes beyond (a write the kill interrupted) are ignored and overwritten.
    """
    snapshots, sidecar = _run_files(path)
    if not os.path.exists(sidecar):
        return {}
    try:
        state = torch.load(sidecar, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever an unreadable pickle raises
        raise _checkpoint_error(sidecar, f"unreadable ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise _checkpoint_error(sidecar, "not a checkpoint written by simulate()")
    if state.get("state_sha256") != _state_digest(state):
        raise _checkpoint_error(sidecar, "the checkpoint fails its SHA-256 check (corrupt)")
    if state.get("run_signature") != signature:
        raise ValueError(
            f"{path}: an unfinished run with different settings exists; delete it or "
            "pass resume=False"
        )
    step, n_done = state.get("step"), state.get("n_done")
    if not isinstance(step, int) or not isinstance(n_done, int) or step < 0:
        raise _checkpoint_error(sidecar, f"step {step!r} and snapshot count {n_done!r}")
    expected = sum(1 for t in snapshot_steps if t <= step)
    if n_done != expected:
        raise _checkpoint_error(
            sidecar,
            f"step {step} and snapshot count {n_done} disagree (the schedule takes {expected} "
            f"snapshots by step {step})",
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_snapshot = 2 * math.prod(snapshot_shape) * itemsize
    nbytes = state.get("snapshot_bytes")
    if nbytes != n_done * per_snapshot:
        raise _checkpoint_error(
            sidecar,
            f"{nbytes!r} snapshot bytes recorded for {n_done} snapshots of {per_snapshot} bytes",
        )
    for name in ("pos", "g"):
        value = state.get(name)
        if not isinstance(value, Tensor) or value.shape != snapshot_shape or value.dtype != dtype:
            raise _checkpoint_error(sidecar, f"bad integrator state '{name}'")
    try:
        with open(snapshots, "rb") as handle:
            data = handle.read(nbytes)
    except OSError as error:
        raise _checkpoint_error(
            sidecar, f"snapshot file {snapshots} unreadable ({error})"
        ) from error
    if len(data) != nbytes:
        raise _checkpoint_error(
            sidecar, f"snapshot file {snapshots} holds {len(data)} bytes, {nbytes} recorded"
        )
    digest = hashlib.sha256(data)
    if digest.hexdigest() != state.get("snapshot_sha256"):
        raise _checkpoint_error(sidecar, f"snapshot file {snapshots} fails its SHA-256 check")
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    snaps = torch.from_numpy(
        np.frombuffer(data, dtype=np_dtype).reshape(n_done, 2, *snapshot_shape).copy()
    )
    return {
        "pos": state["pos"],
        "g": state["g"],
        "step": step,
        "generator_state": state["generator_state"],
        "n_done": n_done,
        "snap_pos": snaps[:, 0],
        "snap_g": snaps[:, 1],
        "digest": digest,
    }


def simulate(
    system: ParticleSystem,
    n_snapshots: int,
    dt: float,
    *,
    burn_in: float = 0.0,
    spacing: float | None = None,
    n_trajectories: int = 1,
    initial: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 100,
    skin: float | None = None,
    dtype: torch.dtype = torch.float64,
    callback: Callable[[int, dict[str, Tensor]], None] | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    r"""Simulates ``n_trajectories`` independent copies and records ``n_snapshots`` snapshots.

    Integrator (per step ``dt``): Euler–Maruyama for positions,
    :math:`x \leftarrow x + b_x\,dt + \sqrt{2\varepsilon\,dt}\,\xi`, and the exact
    Ornstein–Uhlenbeck update :math:`g \leftarrow e^{-\gamma dt} g +
    \sqrt{1 - e^{-2\gamma dt}}\,\zeta` (ABP: exact angle increments), so ``g`` keeps its law
    :math:`\mathcal N(0, I)` for any ``dt``. Positions are wrapped into the box after each step.
    Pair forces use a Verlet list of radius ``cutoff + skin`` from cell lists, rebuilt when a
    particle has moved ``skin / 2`` and at every checkpoint; forces equal a fresh search.

    Snapshot ``s`` is taken after ``round(burn_in / dt) + s * round(spacing / dt)`` steps.
    Initial positions: a jittered lattice (``initial`` overrides), ``g`` from its stationary law.

    With ``out``, every ``checkpoint_every`` snapshots (and every ``checkpoint_every * spacing``
    steps of burn-in) the new snapshots are appended to ``out + ".partial"`` and flushed to disk,
    then the full integrator state (positions, ``g``, step, generator state, snapshot count and
    the SHA-256 of the snapshot bytes) replaces the sidecar ``out + ".partial.state"``
    atomically (:func:`gtlib.io.atomic_torch_save`). A kill at any instant therefore leaves the
    previous or the next checkpoint, and ``resume=True`` continues to exactly the numbers of an
    uninterrupted run (on the CPU; on a GPU to rounding, see ``device``); a checkpoint whose
    step, snapshot count and snapshot bytes disagree raises a :class:`ValueError` naming the
    file instead of resuming wrongly. The complete run is
    written to ``out`` atomically (HDF5, Fletcher-32 checksums on every data set), then the
    ``.partial`` files are removed; stale temporaries of killed writes are removed on the next
    call. An existing complete ``out`` with the same settings is read back instead of simulated
    again.

    Args:
        system: an :class:`ActiveOUParticles` or :class:`ActiveBrownianParticles`.
        n_snapshots: ``S >= 1``.
        dt: time step.
        burn_in: time simulated before the first snapshot.
        spacing: time between snapshots (default ``dt``).
        n_trajectories: independent copies ``B`` run as one batch.
        initial: ``(pos, g)`` of shape ``[N, d]`` or ``[B, N, d]``.
        seed: seeds the ``torch.Generator`` used for everything random.
        out: HDF5 path, or ``None`` to keep the result in memory only.
        resume: continue a matching ``.partial`` file (else start over).
        progress: show a tqdm progress bar.
        checkpoint_every: snapshots between checkpoints.
        skin: Verlet skin (default ``0.5 r0``; ``0`` searches every step). The skin changes
            the cost only, never the numbers.
        dtype: floating-point type of the simulation and the stored arrays.
        callback: called as ``callback(s, {"pos", "g", "time"})`` after snapshot ``s`` (the
            tensors on ``device``).
        device: where to integrate (default: the CPU), e.g. ``"cuda"``: one step is a few
            dozen small kernels whatever ``B`` and ``N``, so a GPU pays off for large batches
            (the same step, float32, ran 1,165 steps/s for 16 x 4096 particles on an H200 in
            ``examples/entropy/mips_phase_probe.py``, and about 1,500 steps/s for one system
            of 1024 on one core of a 2-core x86 VM). The initial state is drawn on the CPU
            from ``seed`` (the same as on the CPU); the integration noise comes from a
            generator on ``device`` seeded with ``seed``, so another device, or another GPU
            model, gives another, equally valid, realisation and is another run (its files
            do not resume there). On a GPU the force sums are atomic additions, so a resumed
            run equals an uninterrupted one to rounding, not bit for bit. Snapshots,
            checkpoints and the result live on the CPU.

    Returns:
        ``{"pos": [S, B, N, d], "g": [S, B, N, d], "time": [S]}``.
    """
    settings = _check_arguments(
        system,
        n_snapshots,
        dt,
        burn_in,
        spacing,
        n_trajectories,
        seed,
        checkpoint_every,
        dtype,
        callback,
        device,
    )
    skin = DEFAULT_SKIN * system.r0 if skin is None else check_real(skin, "skin", nonnegative=True)
    generator = torch.Generator().manual_seed(settings.seed)
    pos0, g0, initial_hash = _initial_state(system, initial, settings, generator)
    if settings.device.type != "cpu":
        pos0, g0 = pos0.to(settings.device), g0.to(settings.device)
        generator = torch.Generator(device=settings.device).manual_seed(settings.seed)
    signature = _run_signature(system, settings, initial_hash)
    path = None if out is None else _check_path(out, "out")
    if path is not None:  # the folder of a new file is made
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path is not None and resume and os.path.exists(path):
        return _finished_run(path, signature)
    run = _Run(system, settings, signature, path, generator, pos0, g0)
    if path is not None:
        run.restore(resume)
    bar = _progress_bar(progress, run.final_step, run.step, type(system).__name__)
    try:
        run.integrate(_NeighbourCache(system, skin), bar, callback)
    finally:
        if bar is not None:
            bar.close()
    if path is not None:
        _write_trajectory(path, system, run.attributes(), run.all_pos, run.all_g, run.time)
        _discard_run_files(path)
    return {"pos": run.all_pos, "g": run.all_g, "time": run.time}


@dataclass(frozen=True)
class _Settings:
    """The checked arguments of one :func:`simulate` call, times in whole steps."""

    n_snapshots: int
    dt: float
    burn_steps: int
    spacing_steps: int
    batch: int
    seed: int
    checkpoint_every: int
    dtype: torch.dtype
    device: torch.device

    @property
    def snapshot_steps(self) -> list[int]:
        """The step of each snapshot."""
        return [self.burn_steps + s * self.spacing_steps for s in range(self.n_snapshots)]

    @property
    def checkpoint_steps(self) -> set[int]:
        """Steps after which a checkpoint is written: every ``checkpoint_every`` snapshots
        (and as often during the burn-in), at the end of the burn-in and at the last snapshot."""
        unit = self.checkpoint_every * self.spacing_steps
        steps = set(range(0, self.burn_steps, unit)) | {self.burn_steps}
        return steps | {
            t
            for s, t in enumerate(self.snapshot_steps)
            if (s + 1) % self.checkpoint_every == 0 or s == self.n_snapshots - 1
        }


def _check_arguments(
    system: Any,
    n_snapshots: Any,
    dt: Any,
    burn_in: Any,
    spacing: Any,
    n_trajectories: Any,
    seed: Any,
    checkpoint_every: Any,
    dtype: Any,
    callback: Any,
    device: Any,
) -> _Settings:
    if not isinstance(system, ActiveOUParticles | ActiveBrownianParticles):
        raise TypeError(
            "`system` must be an ActiveOUParticles or ActiveBrownianParticles, got "
            f"{type(system).__name__}"
        )
    n_snapshots = check_int(n_snapshots, "n_snapshots", minimum=1)
    dt = check_real(dt, "dt", positive=True)
    burn_in = check_real(burn_in, "burn_in", nonnegative=True)
    spacing = dt if spacing is None else check_real(spacing, "spacing", positive=True)
    batch = check_int(n_trajectories, "n_trajectories", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    checkpoint_every = check_int(checkpoint_every, "checkpoint_every", minimum=1)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}")
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable, got {type(callback).__name__}")
    if round(spacing / dt) < 1:
        raise ValueError(f"`spacing`={spacing} must be at least `dt`={dt}")
    device = check_device("cpu" if device is None else device)
    try:
        if device.type == "meta":
            raise RuntimeError("the meta device holds no data")
        torch.empty(0, device=device)
    except Exception as error:  # noqa: BLE001 - whatever the backend raises
        raise ValueError(f"`device`={device} is not available here ({error})") from None
    return _Settings(
        n_snapshots,
        dt,
        round(burn_in / dt),
        round(spacing / dt),
        batch,
        seed,
        checkpoint_every,
        dtype,
        device,
    )


def _initial_state(
    system: _SoftDiscs, initial: Any, settings: _Settings, generator: torch.Generator
) -> tuple[Tensor, Tensor, str]:
    """``(pos [B, N, d], g [B, N, d], hash)``: ``initial`` checked and broadcast to the batch
    (hash of its bytes), or the jittered lattice and stationary ``g`` (hash ``"lattice"``)."""
    batch, dtype = settings.batch, settings.dtype
    n, d = system.num_particles, system.dim
    if initial is None:
        pos0 = _initial_positions(system, batch, generator, dtype)
        return pos0, system._initial_g((batch, n, d), generator, dtype), "lattice"
    if not isinstance(initial, tuple | list) or len(initial) != 2:
        raise TypeError("`initial` must be a (pos, g) pair of tensors")
    pos0, g0 = system._check_pair(initial[0], initial[1])
    if pos0.dim() not in (2, 3) or (pos0.dim() == 3 and pos0.shape[0] != batch):
        raise ValueError(
            f"`initial` tensors must have shape [{n}, {d}] or [{batch}, {n}, {d}], got "
            f"{tuple(pos0.shape)}"
        )
    pos0 = system.wrap(pos0.detach().to("cpu", dtype).expand(batch, n, d).clone())
    g0 = g0.detach().to("cpu", dtype).expand(batch, n, d).clone()
    initial_hash = hashlib.sha256(pos0.numpy().tobytes() + g0.numpy().tobytes()).hexdigest()
    return pos0, g0, initial_hash


def _finished_run(path: str, signature: str) -> dict[str, Tensor]:
    """The complete run already at ``path`` (it must be this run); leftovers of a kill after
    the final rename are removed."""
    finished = load_trajectory(path)
    if finished["attrs"].get("run_signature") != signature:
        raise ValueError(f"{path} exists and holds a different run; delete it or pass resume=False")
    _discard_run_files(path)
    return {key: finished[key] for key in ("pos", "g", "time")}


def _progress_bar(progress: bool, total: int, initial: int, name: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step")


class _Run:
    """The state of one :func:`simulate` run: integrator state, recorded snapshots and the
    checkpoint files (``path`` ``None``: in memory only)."""

    def __init__(
        self,
        system: _SoftDiscs,
        settings: _Settings,
        signature: str,
        path: str | None,
        generator: torch.Generator,
        pos: Tensor,
        g: Tensor,
    ) -> None:
        self.system, self.settings, self.signature = system, settings, signature
        self.path, self.generator = path, generator
        self.pos, self.g = pos, g
        self.step = self.n_done = self.written = 0
        self.digest = hashlib.sha256()
        self.snapshot_shape = (settings.batch, system.num_particles, system.dim)
        shape = (settings.n_snapshots, *self.snapshot_shape)
        self.all_pos = torch.empty(shape, dtype=settings.dtype)
        self.all_g = torch.empty(shape, dtype=settings.dtype)
        self.time = torch.tensor(
            [t * settings.dt for t in settings.snapshot_steps], dtype=torch.float64
        )
        self.snap_steps = {t: s for s, t in enumerate(settings.snapshot_steps)}
        self.checkpoints = settings.checkpoint_steps
        self.final_step = settings.snapshot_steps[-1]

    def restore(self, resume: bool) -> None:
        """Continue from the checkpoint of an unfinished run (if ``resume`` and one exists),
        else clear what an earlier run left."""
        state = {}
        if resume:
            settings = self.settings
            state = _read_checkpoint(
                self.path,
                self.signature,
                self.snapshot_shape,
                settings.dtype,
                settings.snapshot_steps,
            )
        if not state:  # a fresh start (or interrupted before the first checkpoint)
            _discard_run_files(self.path)
            return
        device = self.settings.device
        self.pos, self.g = state["pos"].to(device), state["g"].to(device)
        self.step = state["step"]
        self.n_done = self.written = state["n_done"]
        self.generator.set_state(state["generator_state"])
        self.all_pos[: self.n_done] = state["snap_pos"]
        self.all_g[: self.n_done] = state["snap_g"]
        self.digest = state["digest"]

    def record(self, callback: Callable[[int, dict[str, Tensor]], None] | None) -> None:
        """Store the snapshot due at the current step, if any."""
        s = self.snap_steps.get(self.step)
        if s is None or s != self.n_done:
            return
        self.all_pos[s] = self.pos
        self.all_g[s] = self.g
        self.n_done += 1
        if callback is not None:
            callback(s, {"pos": self.pos, "g": self.g, "time": self.time[s]})

    def save_checkpoint(self) -> None:
        """Append the new snapshots to the snapshot file (flushed), then replace the sidecar
        atomically: a kill leaves the previous or this checkpoint."""
        if self.path is None:
            return
        snapshots, sidecar = _run_files(self.path)
        per_snapshot = 2 * math.prod(self.snapshot_shape) * self.all_pos.element_size()
        data = _snapshot_bytes(self.all_pos, self.all_g, self.written, self.n_done)
        _append_snapshots(snapshots, self.written * per_snapshot, data)
        self.digest.update(data)
        self.written = self.n_done
        checkpoint = {
            "format": _CHECKPOINT_FORMAT,
            "run_signature": self.signature,
            "step": self.step,
            "n_done": self.n_done,
            "snapshot_bytes": self.n_done * per_snapshot,
            "snapshot_sha256": self.digest.hexdigest(),
            "pos": self.pos.to("cpu", copy=True),
            "g": self.g.to("cpu", copy=True),
            "generator_state": self.generator.get_state(),
        }
        checkpoint["state_sha256"] = _state_digest(checkpoint)
        atomic_torch_save(checkpoint, sidecar)

    def integrate(
        self,
        cache: _NeighbourCache,
        bar: Any,
        callback: Callable[[int, dict[str, Tensor]], None] | None,
    ) -> None:
        """Step to the last snapshot, recording snapshots and writing checkpoints."""
        if self.step == 0 and self.n_done == 0:
            self.record(callback)
            self.save_checkpoint()
        dt = self.settings.dt
        while self.step < self.final_step:
            self.pos, self.g = self.system._advance(
                self.pos, self.g, dt, self.generator, cache.forces
            )
            self.step += 1
            self.record(callback)
            if self.step in self.checkpoints:
                cache.invalidate()
                self.save_checkpoint()
            if bar is not None and (self.step % 256 == 0 or self.step == self.final_step):
                bar.n = self.step
                bar.refresh()

    def attributes(self) -> dict[str, Any]:
        """The run's root attributes of the HDF5 file."""
        settings = self.settings
        return {
            "dt": settings.dt,
            "seed": settings.seed,
            "burn_in": settings.burn_steps * settings.dt,
            "spacing": settings.spacing_steps * settings.dt,
            "n_snapshots": settings.n_snapshots,
            "n_trajectories": settings.batch,
            "run_signature": self.signature,
            "complete": True,
        }
