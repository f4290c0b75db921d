"""The simulator's encrypted webhooks decrypt with Node's `crypto.createDecipher`.

EnableX's sample apps decrypt webhooks in Node with the deprecated
`crypto.createDecipher(x-algoritm, APP_ID)` and `decipher.update(data, x-format, x-encoding)`.
This test captures real deliveries from the simulator and decrypts them exactly that way.
Node 20 still has createDecipher. Where node is missing the test is skipped, except in CI
(env CI set), where a missing node fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.integration.sim_helpers import (
    TEST_APP_ID,
    basic_auth,
    broadcast_body,
    phones,
    start_receiver,
    start_simulator,
)

NODE_DECRYPT = r"""
const crypto = require("crypto");
const [appId, file] = process.argv.slice(2);
const deliveries = JSON.parse(require("fs").readFileSync(file, "utf8"));
const events = deliveries.map(({ headers, body }) => {
  const data = JSON.parse(body).encrypted_data;
  const decipher = crypto.createDecipher(headers["x-algoritm"], appId);
  let text = decipher.update(data, headers["x-format"], headers["x-encoding"]);
  text += decipher.final(headers["x-encoding"]);
  return JSON.parse(text);
});
process.stdout.write(JSON.stringify(events));
"""


def node_binary() -> str:
    node = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is required in CI for the Node createDecipher check")
        pytest.skip("node is not installed: cannot check decryption with Node's createDecipher")
    return node


@pytest.mark.parametrize(("algorithm", "fmt"), [("aes256", "base64"), ("aes-256-cbc", "hex"),
                                                ("aes256", "latin1")])  # fmt: skip
async def test_node_create_decipher_reads_simulator_webhooks(
    tmp_path: Path, algorithm: str, fmt: str
) -> None:
    node = node_binary()
    webhooks = {"algorithm": algorithm, "format": fmt}
    async with start_receiver() as rx, start_simulator(webhooks=webhooks) as sim:
        async with httpx.AsyncClient() as http:
            body = broadcast_body(phones(4), rx.url)
            answer = await http.post(sim.base_url + "/broadcast", json=body, headers=basic_auth())
            assert answer.status_code == 200
        await sim.wait_idle()
    assert rx.errors == []
    captured: list[dict[str, object]] = [
        {"headers": d.headers, "body": d.body.decode("utf-8")} for d in rx.deliveries
    ]
    assert len(captured) >= 8
    assert {d.headers["x-format"] for d in rx.deliveries} == {fmt}
    assert {d.headers["x-algoritm"] for d in rx.deliveries} == {algorithm}
    file = tmp_path / "deliveries.json"
    file.write_text(json.dumps(captured))
    script = tmp_path / "decrypt.js"
    script.write_text(NODE_DECRYPT)
    proc = await asyncio.create_subprocess_exec(
        node,
        "--no-deprecation",
        str(script),
        TEST_APP_ID,
        str(file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    decrypted_by_node = json.loads(stdout)
    assert decrypted_by_node == [d.event for d in rx.deliveries]
    numbers = {d["number"].lstrip("+") for d in sim.ledger()}
    assert {e["to"] for e in decrypted_by_node if "to" in e} == numbers
