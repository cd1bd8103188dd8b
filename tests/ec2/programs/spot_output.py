"""A bigactor program run by tests/ec2/test_spot_and_output.py with BIGACTOR_SYSTEM=ec2 and
BIGACTOR_EC2_* settings. It prints one JSON object a line on stdout (the test reads them; its
times are ``time.monotonic()``, the same clock as the test's on this host) and leaves its
machines' output to bigactor, which writes it to this process's stderr.

    python spot_output.py spot    # 2 spot instances; the test interrupts the first one
    python spot_output.py output  # 1 instance whose actor prints; the last line just before closing

It imports nothing outside the standard library, trio and bigactor, so its instances use the
same cached venv as tests/ec2/programs/prog.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import trio
import trio.lowlevel

import bigactor

#: lines of each kind (stdout, stderr, logging) the output program's actor writes per method
LINES = 1500
#: seconds between calls to the machine under notice
CALL_EVERY = 0.05


class Counter:
    """Defined in __main__: travels by value."""

    def __init__(self, start: int) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    async def sleep(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "woke"


class Talker:
    """Writes numbered lines to stdout, stderr and a logger, interleaved, from a sync method
    (on the actor's thread) and an async one (on the worker's Trio thread)."""

    def talk(self, tag: str, n: int) -> int:
        log = logging.getLogger("talker")
        for i in range(n):
            print(f"{tag} out {i}")
            sys.stderr.write(f"{tag} err {i}\n")
            log.warning("%s log %d", tag, i)
        return n

    async def talk_async(self, tag: str, n: int) -> int:
        log = logging.getLogger("talker")
        for i in range(n):
            print(f"{tag} out {i}")
            sys.stderr.write(f"{tag} err {i}\n")
            log.warning("%s log %d", tag, i)
            if i % 100 == 0:
                await trio.lowlevel.checkpoint()
        return n

    def last(self) -> str:
        print("the last line before the cluster closes")
        sys.stdout.write("and a line left open")  # no newline: the marker follows it
        return "said"


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


async def running(machines: list[bigactor.Machine]) -> None:
    for m in machines:
        await m.wait(bigactor.State.RUNNING)
        if m.state != bigactor.State.RUNNING:
            raise RuntimeError(f"{m.addr} did not start: {m.error}")


async def spot_program() -> None:
    drained: list[dict[str, object]] = []

    def on_draining(machine: bigactor.Machine, notice: bigactor.Notice) -> None:
        fields = {"addr": machine.addr, "kind": notice.kind, "message": notice.message,
                  "notice": str(notice), "draining": machine.draining, "t": time.monotonic()}  # fmt: skip
        drained.append(fields)
        emit("on_draining", **fields)

    async with bigactor.open_cluster(on_draining=on_draining) as cluster:
        machines = await cluster.start(2)
        await running(machines)
        victim, survivor = machines
        v = await cluster.options(machine=victim).spawn(Counter, 0)
        s = await cluster.options(machine=survivor).spawn(Counter, 0)
        emit(
            "started",
            victim=victim.addr,
            survivor=survivor.addr,
            instances={i.addr: i.instance_id for i in cluster.system.instances()},  # type: ignore[attr-defined]
            markets={i.addr: i.details()["market"] for i in cluster.system.instances()},  # type: ignore[attr-defined]
            draining=[victim.draining, survivor.draining],
        )
        survivor_calls: list[float] = []
        survivor_errors: list[str] = []
        stop_survivor = trio.Event()

        async def call_survivor() -> None:
            # Throughout the notice and the victim's loss: the survivor must not notice either.
            while not stop_survivor.is_set():
                try:
                    with trio.fail_after(10):
                        await s.add(1)
                    survivor_calls.append(time.monotonic())
                except (bigactor.BigActorError, trio.TooSlowError) as exc:
                    survivor_errors.append(f"{type(exc).__name__}: {exc}")
                await trio.sleep(0.2)

        pending: dict[str, object] = {}
        pending_done = trio.Event()

        async def pending_call() -> None:
            # Sent before the notice; it runs until the instance is gone.
            try:
                pending["result"] = await v.sleep(600)
            except bigactor.MachineLost as exc:
                pending.update(error=str(exc), t=time.monotonic())
            pending_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call_survivor)
            nursery.start_soon(pending_call)
            with trio.fail_after(60):
                await victim.draining_event.wait()
            emit(
                "draining",
                t=time.monotonic(),
                draining=victim.draining,
                state=str(victim.state),
                notices=[[n.kind, n.message, str(n)] for n in victim.notices],
                notice_times=[n.time for n in victim.notices],
                survivor_draining=survivor.draining,
            )
            # The machine serves on during its notice: call it until it is lost. Calls come
            # often enough that one is made between the instance's end and the driver's
            # learning of it (its connection broken, EC2 not yet asked): that call must fail
            # with the machine too, not wait for its own dial to time out.
            served: list[float] = []
            with trio.fail_after(60):
                while True:
                    try:
                        await v.add(1)
                    except bigactor.MachineLost as exc:
                        failed = {"t": time.monotonic(), "error": str(exc), "type": type(exc).__name__}
                        break
                    served.append(time.monotonic())
                    await trio.sleep(CALL_EVERY)
            with trio.fail_after(30):
                await pending_done.wait()
            try:
                await v.add(1)
            except bigactor.MachineLost as exc:
                new_call = {"t": time.monotonic(), "error": str(exc)}
            else:
                new_call = {"error": None}
            emit(
                "lost",
                served=served,
                failed=failed,
                pending=pending,
                new_call=new_call,
                state=str(victim.state),
                machine_error=str(victim.error),
            )
            await trio.sleep(1)  # the survivor is called a little longer after the loss
            stop_survivor.set()
        emit(
            "survivor",
            value=await s.add(0),
            calls=len(survivor_calls),
            errors=survivor_errors,
            last_call=survivor_calls[-1] if survivor_calls else None,
            state=str(survivor.state),
            draining=survivor.draining,
            notices=len(survivor.notices),
            error=str(survivor.error) if survivor.error else None,
        )
        emit("on_draining_calls", calls=drained)
        t = time.monotonic()
    emit("closed", seconds=time.monotonic() - t)


async def output_program() -> None:
    async with bigactor.open_cluster() as cluster:
        [machine] = await cluster.start(1)
        await running([machine])
        talker = await cluster.options(machine=machine).spawn(Talker)
        [instance] = cluster.system.instances()  # type: ignore[attr-defined]
        emit("started", addr=machine.addr, instance_id=instance.instance_id)
        # One after the other: two threads printing at once may split each other's lines
        # (print writes the text and its newline apart), on any host.
        await talker.talk("sync", LINES)
        await talker.talk_async("async", LINES)
        emit("said", value=await talker.last())
        # Leave at once: the last lines are still on their way.
        t = time.monotonic()
    emit("closed", seconds=time.monotonic() - t)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    what = sys.argv[1]
    if what == "spot":
        trio.run(spot_program)
    elif what == "output":
        trio.run(output_program)
    else:
        raise SystemExit(f"unknown program {what!r}")


if __name__ == "__main__":
    main()
