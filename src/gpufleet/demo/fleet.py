"""What the simulated fleet is made of: server shapes, lab groups, users and job types.

Everything is drawn from one seed, so the same seed gives the same fleet. The wire has no
host groups or tags, so a host's group is the first part of its name (``vision-a100-03``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True, slots=True)
class GpuModel:
    name: str  # as NVML reports it
    label: str  # short, for host names
    memory_bytes: int
    power_limit_watts: float
    idle_watts: float
    max_sm_mhz: int
    has_fan: bool  # passively cooled data-centre cards report no fan speed
    speed: float  # relative throughput (V100 = 1), for utilisation head-room


GPU_MODELS: dict[str, GpuModel] = {
    m.label: m
    for m in (
        GpuModel("NVIDIA A100-SXM4-80GB", "a100", 80 * GIB, 400, 55, 1410, False, 2.2),
        GpuModel("NVIDIA A100-PCIE-40GB", "a100pcie", 40 * GIB, 250, 35, 1410, False, 1.9),
        GpuModel("Tesla V100-SXM2-32GB", "v100", 32 * GIB, 300, 40, 1530, False, 1.0),
        GpuModel("NVIDIA GeForce RTX 3090", "rtx3090", 24 * GIB, 350, 22, 1695, True, 1.1),
        GpuModel("Tesla T4", "t4", 15 * GIB, 70, 10, 1590, False, 0.35),
    )
}


@dataclass(frozen=True, slots=True)
class Shape:
    """A kind of server the lab bought: GPUs, CPU, RAM, disks and software."""

    gpu: str  # key of GPU_MODELS
    gpu_count: int
    cpu_model: str
    cpu_count: int
    memory_bytes: int
    data_disk_bytes: int
    driver: tuple[str, int]  # (driver version, CUDA driver version as NVML gives it)
    os: str
    kernel: str
    weight: float  # share of the fleet


SHAPES: tuple[Shape, ...] = (
    Shape("a100", 8, "AMD EPYC 7742 64-Core Processor", 256, 1024 * GIB, 15 * 10**12,
          ("550.90.07", 12040), "Ubuntu 22.04.4 LTS", "5.15.0-113-generic", 0.25),
    Shape("v100", 8, "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", 80, 512 * GIB, 8 * 10**12,
          ("470.256.02", 11040), "Ubuntu 20.04.6 LTS", "5.4.0-182-generic", 0.30),
    Shape("rtx3090", 4, "AMD Ryzen Threadripper 3970X 32-Core Processor", 64, 256 * GIB,
          4 * 10**12, ("535.183.01", 12020), "Ubuntu 22.04.4 LTS", "5.15.0-107-generic", 0.20),
    Shape("t4", 4, "Intel(R) Xeon(R) Silver 4214 CPU @ 2.20GHz", 48, 192 * GIB, 2 * 10**12,
          ("535.183.01", 12020), "Rocky Linux 8.9 (Green Obsidian)", "4.18.0-513.24.1.el8_9.x86_64",
          0.15),
    Shape("a100pcie", 4, "AMD EPYC 7543 32-Core Processor", 128, 512 * GIB, 8 * 10**12,
          ("550.90.07", 12040), "Debian GNU/Linux 12 (bookworm)", "6.1.0-21-amd64", 0.10),
)  # fmt: skip

# Lab groups and the share of hosts each owns; the trace's virtual clusters map onto them.
GROUPS: tuple[tuple[str, float], ...] = (
    ("vision", 0.30), ("nlp", 0.30), ("speech", 0.12), ("rl", 0.10), ("shared", 0.18),
)  # fmt: skip
CLUSTER_GROUPS = {
    "6214e9": "nlp", "11cb48": "vision", "103959": "speech", "0e4a51": "rl",
    "ed69ec": "vision", "2869ce": "nlp", "e13805": "shared",
}  # fmt: skip

_FIRST = "abcdeghjklmnprstwxyz"
_LAST = (  # noqa: SIM905
    "chen wang li zhang liu yang huang zhao wu zhou xu sun ma zhu hu guo lin he gao luo "
    "smith johnson garcia miller davis martinez lopez wilson anderson taylor thomas moore "
    "kumar patel singh sharma nguyen tran kim park lee choi muller schmidt rossi silva"
).split()


@dataclass(frozen=True, slots=True)
class HostSpec:
    index: int
    name: str
    group: str
    shape: Shape
    flaky_gpu: int | None = None  # this GPU errors now and then (and nobody gets placed on it)
    goes_offline: bool = False  # this host stops reporting now and then

    @property
    def gpu(self) -> GpuModel:
        return GPU_MODELS[self.shape.gpu]

    @property
    def gpu_count(self) -> int:
        return self.shape.gpu_count


def _apportion(n: int, weights: list[float]) -> list[int]:
    """Split ``n`` by ``weights`` (largest remainders), every share at least 1 while n allows."""
    total = sum(weights)
    raw = [n * w / total for w in weights]
    counts = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True):
        if sum(counts) >= n:
            break
        counts[i] += 1
    return counts


def build_fleet(n_hosts: int = 24, seed: int = 0) -> list[HostSpec]:
    """``n_hosts`` servers of mixed shapes in lab groups; one with a flaky GPU and one that goes
    offline now and then (when the fleet has at least 3 hosts)."""
    if n_hosts < 1:
        raise ValueError("a fleet needs at least one host")
    rng = random.Random(f"fleet:{seed}")
    shapes = [s for s, c in zip(SHAPES, _apportion(n_hosts, [s.weight for s in SHAPES]),
                                strict=True) for _ in range(c)]  # fmt: skip
    rng.shuffle(shapes)
    groups = [g for (g, _), c in zip(GROUPS, _apportion(n_hosts, [w for _, w in GROUPS]),
                                     strict=True) for _ in range(c)]  # fmt: skip
    numbers: dict[tuple[str, str], int] = {}
    specs = []
    for i, (shape, group) in enumerate(zip(shapes, groups, strict=True)):
        key = (group, shape.gpu)
        numbers[key] = numbers.get(key, 0) + 1
        name = f"{group}-{shape.gpu}-{numbers[key]:02d}"
        specs.append(HostSpec(i, name, group, shape))
    if n_hosts >= 3:
        eight = [s for s in specs if s.gpu_count == 8] or specs
        flaky = eight[rng.randrange(len(eight))]
        specs[flaky.index] = HostSpec(flaky.index, flaky.name, flaky.group, flaky.shape,
                                      flaky_gpu=rng.randrange(flaky.gpu_count))  # fmt: skip
        others = [s for s in specs if s.index != flaky.index]
        off = others[rng.randrange(len(others))]
        specs[off.index] = HostSpec(off.index, off.name, off.group, off.shape, goes_offline=True)
    return specs


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    group: str
    weight: float  # how much of the group's work is theirs (a few heavy users, a long tail)


def build_users(seed: int = 0, per_group: int = 9) -> dict[str, list[User]]:
    """Plausible Unix users per lab group, with Zipf-like weights."""
    rng = random.Random(f"users:{seed}")
    taken: set[str] = set()
    out: dict[str, list[User]] = {}
    uid = 1001
    for group, _ in GROUPS:
        users = []
        for rank in range(per_group):
            while True:
                name = rng.choice(_FIRST) + rng.choice(_LAST)
                if name not in taken:
                    break
            taken.add(name)
            users.append(User(name, uid, group, 1.0 / (rank + 1) ** 1.2))
            uid += 1
        out[group] = users
    return out


def group_of_cluster(cluster: str) -> str:
    known = CLUSTER_GROUPS.get(cluster)
    if known is not None:
        return known
    names = [g for g, _ in GROUPS]
    return names[sum(cluster.encode()) % len(names)]


@dataclass(frozen=True, slots=True)
class JobType:
    """How a kind of job uses a GPU and its host."""

    name: str
    weight: float
    command: str  # {user} is replaced
    memory_gib: float  # per GPU; None-like 0 means "takes (almost) all of it" (TensorFlow)
    util: float  # mean GPU utilisation when computing
    util_sd: float
    epoch_seconds: float  # every epoch ends with a slower validation pass (0: none)
    cpu_per_gpu: float  # cores busy per GPU (data loading)
    host_memory_gib: float  # per GPU
    net_mib_s: float  # per GPU, reading the data set
    idle: bool = False  # holds its GPU memory but rarely computes (notebooks)


JOB_TYPES: tuple[JobType, ...] = (
    JobType("resnet50", 0.20, "python train_imagenet.py --arch resnet50 --batch-size 256 "
            "--data /data/imagenet --workers 8", 14, 93, 4, 1800, 6, 24, 160),
    JobType("bert", 0.13, "python run_pretraining.py --model bert-large-uncased --seq-len 512 "
            "--fp16", 29, 97, 2, 0, 2, 16, 20),
    JobType("transformer", 0.12, "fairseq-train data-bin/wmt17_en_de --arch "
            "transformer_wmt_en_de_big --max-tokens 4096 --fp16", 21, 88, 6, 2700, 3, 12, 10),
    JobType("lstm", 0.10, "python main.py --model LSTM --data ./data/wikitext-103 --epochs 40",
            6, 55, 12, 900, 1.5, 8, 5),
    JobType("cyclegan", 0.08, "python train.py --model cycle_gan --dataroot "
            "./datasets/monet2photo --name monet", 9, 76, 8, 1200, 4, 10, 40),
    JobType("a3c", 0.07, "python a3c.py --env PongNoFrameskip-v4 --num-processes 32", 2.5, 28,
            10, 0, 14, 20, 1),
    JobType("dlrm", 0.07, "python dlrm_s_pytorch.py --data-set=terabyte "
            "--processed-data-file=/data/criteo/day", 35, 62, 10, 0, 5, 64, 220),
    JobType("tf-benchmarks", 0.08, "python tf_cnn_benchmarks.py --model=inception3 "
            "--batch_size=64 --variable_update=replicated", 0, 84, 5, 0, 4, 16, 90),
    JobType("vit", 0.07, "torchrun --nproc_per_node=auto train.py --model vit_b_16 "
            "--amp --data-path /data/imagenet", 38, 95, 3, 2400, 5, 20, 180),
    JobType("notebook", 0.08, "python -m ipykernel_launcher -f "
            "/home/{user}/.local/share/jupyter/runtime/kernel.json", 11, 35, 20, 0, 0.3, 6, 0,
            idle=True),
)  # fmt: skip
