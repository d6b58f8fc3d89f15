"""The HTTP API on a real socket: calls driven through an in-memory engine are recorded by the writer thread,
then /metrics (read with prometheus-client's own parser), /traceback, /report and /healthz are asked over HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.api import start_api
from proxy.config import ApiSettings, RecordsSettings
from proxy.metrics import Metrics, engine_snapshot
from proxy.records import RecordWriter, call_end_hook
from tests.unit.core.sipfake import Harness
from tests.unit.records.helpers import answered_call, rejected_call

N_ANSWERED = 7
N_REJECTED = 3


def _drive(db: Path) -> tuple[Harness, Metrics, RecordWriter, float]:
    h = Harness()
    h.engine.wall_offset = time.time() - h.now
    started = h.now + h.engine.wall_offset
    metrics = Metrics()
    writer = RecordWriter(RecordsSettings(path=str(db), flush_interval=0.05))
    writer.start()
    h.engine.call_end_hooks.append(call_end_hook(writer, [metrics.observe_call], h.engine.auth.tn_policy))
    for _ in range(N_ANSWERED):
        answered_call(h, hold=3.0)
    for _ in range(N_REJECTED):
        rejected_call(h, 486)
    return h, metrics, writer, started


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


async def _scenario(db: Path) -> dict[str, Any]:
    h, metrics, writer, started = _drive(db)
    runner = await start_api(ApiSettings(listen="127.0.0.1:0"), lambda: engine_snapshot(h.engine), str(db),
                             metrics=metrics, writer=writer)
    try:
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        # Wait for the writer thread to commit (it runs beside the loop, as in stirgate).
        deadline = time.monotonic() + 5
        while writer.written < N_ANSWERED + N_REJECTED and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        out: dict[str, Any] = {"started": started}
        async with aiohttp.ClientSession() as s:
            out["healthz"] = await _get(s, f"{base}/healthz")
            out["metrics"] = await _get(s, f"{base}/metrics")
            at = started + 1
            out["traceback"] = await _get(s, f"{base}/traceback?orig=%2B12125550100&dest=15551234567&at={at}"
                                             "&window=10m")
            out["traceback_none"] = await _get(s, f"{base}/traceback?orig=12125550100&dest=15551234567"
                                                  f"&at={at + 7200}&window=1m")
            out["traceback_bad"] = await _get(s, f"{base}/traceback?orig=12125550100")
            # The fake clock ran ahead of the wall clock (held calls): end the window later.
            out["report"] = await _get(s, f"{base}/report?since=1h&until={started + 600}")
    finally:
        await runner.cleanup()
        writer.flush_and_close()
    return out


def test_api_over_http(tmp_path: Path) -> None:
    import json

    out = asyncio.run(_scenario(tmp_path / "records.sqlite3"))
    status, body = out["healthz"]
    assert status == 200 and json.loads(body)["records_writer"] == "up"

    status, text = out["metrics"]
    assert status == 200
    samples: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s)
    by_outcome = {s.labels["outcome"]: s.value for s in samples["stirgate_calls_total"]}
    assert by_outcome == {"answered": N_ANSWERED, "rejected": N_REJECTED}
    assert all(s.labels["trunk"] == "customer" for s in samples["stirgate_calls_total"])
    events = {s.labels["event"]: s.value for s in samples["stirgate_sip_events_total"]}
    assert events["invites"] == N_ANSWERED + N_REJECTED and events["answered"] == N_ANSWERED
    assert samples["stirgate_active_calls"][0].value == 0
    assert samples["stirgate_records_written_total"][0].value == N_ANSWERED + N_REJECTED
    assert samples["stirgate_records_dropped_total"][0].value == 0
    assert "process_cpu_seconds_total" in samples

    status, body = out["traceback"]
    assert status == 200
    calls = json.loads(body)["calls"]
    assert len(calls) == N_ANSWERED + N_REJECTED
    assert {c["status"] for c in calls} == {200, 486}
    assert all(c["ingress"] == "customer" and c["source_ip"] == "127.0.0.10" for c in calls)
    assert all(abs(c["invite_at"] - out["started"]) < 60 for c in calls)
    assert json.loads(out["traceback_none"][1])["calls"] == []
    assert out["traceback_bad"][0] == 400 and "dest" in json.loads(out["traceback_bad"][1])["error"]

    status, body = out["report"]
    rep = json.loads(body)
    assert status == 200 and rep["calls"] == N_ANSWERED + N_REJECTED
    (orig,) = rep["sources"]["orig"]
    assert orig["key"] == "12125550100" and orig["answered"] == N_ANSWERED and orig["short_share"] == 1.0
