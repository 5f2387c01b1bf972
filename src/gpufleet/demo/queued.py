"""The demo's live queue: the replayed fleet shows the queue's jobs (the replay dispatcher's
runs) as GPU use, and a trickle of submissions keeps the queue moving, so ``make run`` shows a
queue that places and finishes work (/queue, and the Q marks on the overview's GPU bars)."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

log = logging.getLogger(__name__)

MODELS = ("resnet50", "bert", "transformer", "lstm", "vit")


def connect(app: Any, engine: Any) -> bool:
    """Let the engine's replayed hosts show the queue's runs; False when the queue is off or
    not on the replay dispatcher."""
    svc = getattr(app.state, "queue", None)
    running = getattr(getattr(svc, "dispatcher", None), "running", None)
    if running is None:
        return False
    engine.queued = running
    return True


class Trickle:
    """Submits a job every ``every_seconds`` (jittered) through the server's admin API: 1-4
    GPUs, ``sleep`` of 1-8 minutes, users of the replayed fleet."""

    def __init__(self, url: str, admin_key: str, users: list[str], *, seed: int = 0,
                 every_seconds: float = 20.0) -> None:  # fmt: skip
        self.url, self.key, self.users = url, admin_key, users
        self.rng = random.Random(f"trickle:{seed}")
        self.every_seconds = every_seconds
        self.stop = threading.Event()
        self.submitted = 0
        self.thread = threading.Thread(target=self._run, name="demo-queue", daemon=True)

    def spec(self) -> dict[str, Any]:
        rng = self.rng
        return {
            "name": f"{rng.choice(MODELS)}-{rng.randrange(1000):03d}",
            "user": rng.choice(self.users),
            "gpus": rng.choices([1, 2, 4], weights=[6, 3, 1])[0],
            "model_name": rng.choice(MODELS),
            "epochs": rng.randrange(1, 20),
            "command": f"sleep {rng.randrange(60, 480)}",
        }

    def _run(self) -> None:
        import httpx

        while not self.stop.wait(self.every_seconds * self.rng.uniform(0.5, 1.5)):
            try:
                r = httpx.post(self.url + "/api/v1/admin/jobs", json=self.spec(), timeout=10,
                               headers={"Authorization": f"Bearer {self.key}"})  # fmt: skip
                if r.status_code == 201:
                    self.submitted += 1
                else:
                    log.info("demo queue: submission refused: %s", r.text[:200])
            except httpx.HTTPError as exc:
                log.info("demo queue: cannot submit: %s", exc)

    def start(self) -> None:
        self.thread.start()
