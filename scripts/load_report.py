"""The load benchmark's report: a section of detail per scenario as it is printed, then one
table of the headline figures against their targets."""

from __future__ import annotations

import os
from dataclasses import dataclass

from benchlib import Latency, mb, say  # scripts/, beside this file
from load_probes import Outcome, bursts, tcp_wmem_max
from load_scenarios import Commands, Fanout, Sizes, Slow, Uploads

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "local socket")


@dataclass
class Results:
    """What a run measured; a scenario left out is None."""

    where: str
    db_host: str
    machine: str = ""
    ingest_s: float = 0.0
    settings: Outcome | None = None
    commands: Commands | None = None
    fanout: Fanout | None = None
    slow: Slow | None = None
    uploads: Uploads | None = None


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def report(r: Results, sizes: Sizes, nofile: int, runtime: float) -> None:
    rows: list[str] = []
    if r.settings is not None:
        rows.append(settings_section(r.settings, sizes))
    if r.commands is not None:
        rows += commands_section(r.commands, sizes)
    if r.fanout is not None:
        rows += fanout_section(r.fanout, sizes, r.db_host)
    if r.slow is not None:
        rows.append(slow_section(r.slow, sizes))
    if r.uploads is not None:
        rows.append(uploads_section(r.uploads, sizes))
    say(
        f"\n## Load benchmark ({os.cpu_count()} cores, {r.where}, "
        f"open files {nofile}; run took {runtime:.0f} s)"
    )
    say(f"machine: {r.machine}\n")
    say("| measure | figure | target |")
    say("|---|---|---|")
    for row in rows:
        say(row)


def settings_section(s: Outcome, sizes: Sizes) -> str:
    st = Latency.of(s.latencies)
    errors = sum(s.errors.values())
    n_users = sizes.run_users + sizes.extra_users
    say(f"\n## 1. settings GET, open loop {sizes.settings_rate:g} req/s for {sizes.settings_s:g} s")
    say(
        f"one instance, {n_users} users ({sizes.run_users} with chunks); latency from the "
        "scheduled send time"
    )
    say(
        f"count {st.n} + {errors} errors {s.errors or ''}; p50/p90/p99/max {st}; "
        f"achieved {len(s.latencies) / s.wall_s:.0f} req/s; scheduler ever "
        f"{s.late_start_max * 1000:.1f} ms behind its timetable"
    )
    say(f"requests over 20 ms, by when they were scheduled: {bursts(s.timeline, 0.02) or 'none'}")
    return (
        f"| settings GET, {sizes.settings_rate:g} req/s open loop × {sizes.settings_s:g} s, "
        f"{n_users} users, one instance | p50 {st.p50:.1f} / p90 {st.p90:.1f} / "
        f"p99 {st.p99:.1f} / max {st.max:.1f} ms, {errors} errors in {st.n + errors} | "
        f"p99 < 20 ms {mark(st.p99 < 20 and not s.errors)} |"
    )


def commands_section(c: Commands, sizes: Sizes) -> list[str]:
    gs, ps = Latency.of(c.generate.latencies), Latency.of(c.proceed.latencies)
    say(f"\n## 2. 202 latency, {sizes.run_users} users alternating A/B, {sizes.command_rate:g}/s")
    say(
        f"generate: {gs.n} replies, errors {c.generate.errors or 0}; p50/p90/p99/max {gs}; "
        f"all runs generating_failed {c.failed_s:.1f} s after the last reply"
    )
    say(
        f"proceed:  {ps.n} replies, errors {c.proceed.errors or 0}; p50/p90/p99/max {ps}; "
        f"all runs generated {c.generated_s:.1f} s after the last reply"
    )
    return [
        f"| generate → 202, {sizes.run_users} users at {sizes.command_rate:g}/s | "
        f"p50 {gs.p50:.1f} / p99 {gs.p99:.1f} ms, {sum(c.generate.errors.values())} errors | — |",
        f"| proceed → 202 after a failure, {sizes.run_users} runs at {sizes.command_rate:g}/s | "
        f"p50 {ps.p50:.1f} / p99 {ps.p99:.1f} ms, {sum(c.proceed.errors.values())} errors | — |",
    ]


def fanout_section(f: Fanout, sizes: Sizes, db_host: str) -> list[str]:
    n = sizes.subscribers
    say(f"\n## 3. {n} SSE subscribers on one job on A ({n // 2} on A, {n // 2} on B via NOTIFY)")
    say(
        "delivery latency = the subscriber's receive time (wall clock) − the stored event's "
        "created_at (PostgreSQL now() at the insert): the event payloads carry no timestamp."
    )
    if db_host not in LOCAL_HOSTS:
        say(f"  (the database is on {db_host}: its clock may differ from this one)")
    say(
        "fan-out spread = receive time − the first subscriber's receive time of the same "
        "event (clock-independent)."
    )
    say(
        f"connect all {n}: {f.connect_s:.2f} s; job {f.job_s:.1f} s from first to last "
        f"event, {f.events} events; {f.replayed} (subscriber, event) deliveries were replays "
        "of events stored before the subscriber connected and are left out"
    )
    say(f"delivery, all:       n={f.every.n}, p50/p90/p99/max {f.every}")
    say(f"delivery, on A:      n={f.on_a.n}, p50/p90/p99/max {f.on_a}")
    say(f"delivery, on B:      n={f.on_b.n}, p50/p90/p99/max {f.on_b}")
    say(f"fan-out spread:      p50/p90/p99/max {f.spread}")
    say(
        f"`done` received by {f.done}/{n}; every event in order: {f.complete}/{n}; "
        f"errors: {len(f.errors)} {f.errors[:3] if f.errors else ''}"
    )
    for name in ("a", "b"):
        say(
            f"RSS {name.upper()}: before {mb(f.rss.before[name])}, subscribers connected "
            f"{mb(f.rss.loaded[name])}, peak {mb(f.rss.peak[name])}, "
            f"after {mb(f.rss.after[name])}"
        )
    return [
        f"| SSE delivery, {n} subscribers on one job (½ local, ½ via NOTIFY) | "
        f"p50 {f.every.p50:.1f} / p99 {f.every.p99:.1f} / max {f.every.max:.1f} ms; "
        f"`done` {f.done}/{n} | p99 < 100 ms {mark(f.every.p99 < 100 and f.done == n)} |",
        f"| RSS with {n // 2} subscribers per instance | A {mb(f.rss.before['a'])} → peak "
        f"{mb(f.rss.peak['a'])}, B {mb(f.rss.before['b'])} → peak {mb(f.rss.peak['b'])} "
        f"(+{mb(f.rss.growth())} at most) | — |",
    ]


def slow_section(s: Slow, sizes: Sizes) -> str:
    say(
        f"\n## 4. slow subscribers: {sizes.slow} sockets that read nothing "
        f"({sizes.slow // 2} on A, {sizes.slow // 2} on B), and 10 normal ones"
    )
    say(
        f"a job of another instance (rows and events written with the service's SQL) emits "
        f"{s.events} events in {s.emit_s:.1f} s ({s.events / s.emit_s:.0f}/s); both "
        f"instances get them through NOTIFY; the normal subscribers had all of them "
        f"{s.delivered_s:.1f} s after the first ({s.events / s.delivered_s:.0f}/s); "
        f"subscribers seen: {s.connected}"
    )
    unread = s.bytes_per_stream * sizes.slow
    say(
        f"each stream {s.bytes_per_stream / 1024:.0f} KB, {mb(unread)} unread in all until "
        f"{sizes.slow_pause_s:g} s after the job ended"
    )
    say(
        f"subscribers switched to catch-up from the database (lagged): A {s.lagged['a']}, "
        f"B {s.lagged['b']}; normal subscribers with `done`: {s.control_done}/10"
    )
    say(
        "held in the kernel's socket send queues meanwhile: "
        + ", ".join(f"{n.upper()} {mb(q)} on {c} connections" for n, (c, q) in s.kernel.items())
    )
    wmem = tcp_wmem_max()
    say(
        "so the service's own bound (a queue of supervisor.subscriber_queue events per "
        "subscriber, then catch-up from the database) is reached only once a socket's send "
        "buffer is full"
        + (f" (net.ipv4.tcp_wmem allows up to {mb(wmem)} per socket)" if wmem else "")
    )
    say(f"every event, in order, through `done`: {s.complete}/{sizes.slow} slow streams")
    for name in ("a", "b"):
        say(
            f"RSS {name.upper()}: before {mb(s.rss.before[name])}, peak {mb(s.rss.peak[name])}, "
            f"stalled {mb(s.rss.loaded[name])}, after {mb(s.rss.after[name])}"
        )
    growth = s.rss.growth()
    return (
        f"| {sizes.slow} slow subscribers, {mb(unread)} unread | RSS +{mb(growth)} at most; "
        f"{s.complete}/{sizes.slow} streams complete after catch-up | bounded, complete "
        f"{mark(s.complete == sizes.slow and growth < 100 * 2**20)} |"
    )


def uploads_section(u: Uploads, sizes: Sizes) -> str:
    quiet, busy = Latency.of(u.quiet.latencies), Latency.of(u.busy.latencies)
    errors = sum(u.busy.errors.values())
    say(
        f"\n## 5. one user uploading as fast as it can: {sizes.upload_streams} uploads of "
        f"{sizes.upload_documents} documents in flight, back to back, on one instance"
    )
    say(
        f"other users' settings GET at {sizes.upload_rate:g} req/s for {sizes.upload_s:g} s, "
        "open loop, latency from the scheduled send time"
    )
    say(f"without the uploads: p50/p90/p99/max {quiet}; errors {u.quiet.errors or 0}")
    say(f"during the uploads:  p50/p90/p99/max {busy}; errors {u.busy.errors or 0}")
    say(
        f"requests over 50 ms, by when they were scheduled: "
        f"{bursts(u.busy.timeline, 0.05) or 'none'}"
    )
    say(
        f"the uploads' replies: {dict(sorted(u.replies.items()))}; {u.uploaded_chunks} chunks "
        f"stored; each accepted upload p50/p99 {u.upload.p50:.0f} / {u.upload.p99:.0f} ms"
    )
    return (
        f"| other users' settings GET while one user uploads ({sizes.upload_streams} × "
        f"{sizes.upload_documents} documents in flight) | p50 {busy.p50:.1f} / p99 "
        f"{busy.p99:.1f} ms (without uploads p99 {quiet.p99:.1f}), {errors} errors | "
        f"p99 < 50 ms {mark(busy.p99 < 50 and not errors)} |"
    )
