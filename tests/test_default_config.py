"""The shipped default config, driven the way scripts/serve drives it: CLI set-up, then
`python -m proxy serve`, then the landing page's model IDs through the official SDK, offline."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import openai

from proxy.billing.money import parse_amount
from proxy.workspaces.crypto import generate_master_key
from testkit.gateway import GatewayProcess
from tests.fakes.hostile import ROOT


def _cli(config: Path, env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "proxy", *args, "--config", str(config)], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


async def _the_rest_of_the_stateless_api(client: openai.AsyncOpenAI) -> None:
    for lane in ("cheap", "resale", "byok/openai"):
        moderation = await client.moderations.create(model=f"{lane}/omni-moderation-latest", input="hello")
        assert moderation.results[0].flagged is False
        image = await client.images.generate(model=f"{lane}/gpt-image-1", prompt="a red square")
        assert base64.b64decode(image.data[0].b64_json or "").startswith(b"\x89PNG") and image.usage
        speech = await client.audio.speech.create(model=f"{lane}/gpt-4o-mini-tts", voice="alloy", input="hi there")
        audio = speech.read()
        assert audio.startswith(b"RIFF") and len(audio) > 44
        transcript = await client.audio.transcriptions.create(model=f"{lane}/gpt-4o-transcribe",
                                                              file=("hi.wav", audio, "audio/wav"))
        assert transcript.text.startswith("Hello from the OneKeyModels mock transcriber")


async def test_default_config_serves_every_lane_offline(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    text = (ROOT / "config" / "gateway.yaml").read_text().replace("port: 8080", "port: 0")
    config = tmp_path / "config" / "gateway.yaml"
    config.write_text(text)
    secrets = {"OKM_KEY_PEPPER": "pepper-" + "x" * 32, "OKM_MASTER_KEY": generate_master_key()}
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "okm.env").write_text("".join(f"{k}={v}\n" for k, v in secrets.items()))
    env = {"PATH": "/usr/bin:/bin"}  # the secrets come only from var/okm.env, as with scripts/serve
    _cli(config, env, "workspace", "create", "demo")
    _cli(config, env, "workspace", "byok-enable", "demo")
    _cli(config, env, "byok", "set", "demo", "openai", stdin="demo-offline-provider-key\n")
    key = next(line.split()[-1] for line in _cli(config, env, "key", "create", "demo").splitlines()
               if line.startswith("key:"))
    for _ in range(2):  # scripts/serve's demo credit, as it grants it: once, whatever the re-runs
        if '"note": "demo credit"' not in _cli(config, env, "billing", "ledger", "demo", "--json"):
            _cli(config, env, "billing", "credit", "demo", "10.00", "--note", "demo credit")
    gateway = await GatewayProcess(config, env, tmp_path / "gateway.log").start()
    try:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0) as client:
            ids = {m.id for m in (await client.models.list()).data}
            assert {"cheap/gpt-5.4", "resale/gpt-5.4", "byok/openai/gpt-5.4"} <= ids
            for model in ("cheap/gpt-5.4", "resale/gpt-5.4", "byok/openai/gpt-5.4"):
                answer = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
                assert "mock" in (answer.choices[0].message.content or "") and answer.usage.total_tokens > 0
            stream = await client.chat.completions.create(model="resale/gpt-5.4", stream=True,
                                                          messages=[{"role": "user", "content": "hi"}])
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text.startswith("Hello from the OneKeyModels mock")
            events = [e.type async for e in await client.responses.create(model="cheap/gpt-5.4", input="hi", stream=True)]
            assert events[0] == "response.created" and events[-1] == "response.completed"
            vectors = await client.embeddings.create(model="cheap/text-embedding-3-small", input=["a", "b"])
            assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8
            await _the_rest_of_the_stateless_api(client)
    finally:
        gateway.kill()
    assert (tmp_path / "var" / "okm.sqlite3").exists()  # relative paths resolve against the config's folder
    balance = json.loads(_cli(config, env, "billing", "balance", "demo", "--json"))
    assert balance["credits"] == "10.000000" and 0 < balance["charges_micros"] < 10_000_000
    assert balance["held_micros"] == 0
    exported = _cli(config, env, "usage", "export", "demo").splitlines()
    assert exported[0].startswith("time,request_id,key_id,model,lane") and len(exported) == 1 + 6 + 3 * 4
    costs = {line.split(",")[3]: parse_amount(line.split(",")[11]) for line in exported[1:]}
    free = {"cheap/omni-moderation-latest", "resale/omni-moderation-latest"}  # priced at 0 in the demo book
    assert all(cost > 0 for model, cost in costs.items() if model not in free) and costs.keys() >= free
