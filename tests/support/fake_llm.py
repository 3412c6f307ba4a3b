"""`FakeLlm`: a small aiohttp app speaking the OpenAI `/v1/chat/completions` wire format and the
audio API, for the LLM engine's tests, the end-to-end tests and the LLM bench."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from services.worker.engines.openai import GROUNDING_HEADER, REPLY_FORMAT
from tests.support import PRAZO, free_port

LLM_TEXT = "Entregamos em até 5 dias úteis nas capitais."
STREAM_PAUSE_S = 0.02
# The containers a transcription server decodes: Ogg, MP3, WAV, FLAC, WebM, MP4/M4A.
AUDIO_MAGIC = (
    b"OggS",
    b"ID3",
    b"\xff\xfb",
    b"RIFF",
    b"fLaC",
    b"\x1aE\xdf\xa3",
    b"\x00\x00\x00\x1cftyp",
    b"\x00\x00\x00\x20ftyp",
)
# What the fake's /audio/speech answers: the head of an Ogg/Opus stream (the clients pass it on).
SPEECH_AUDIO = b"OggS\x00\x02" + bytes(20) + b"OpusHead\x01\x01" + bytes(64)


@dataclass(frozen=True)
class Completion:
    """A script step: the model's output, exactly (streamed word by word when asked to stream)."""

    content: str


def says(kind: str, text: str, sources: list[str] | None = None, options: list[str] | None = None) -> Completion:
    """A script step: the model keeping to the engine's reply format (openai.REPLY_FORMAT)."""
    reply = {"kind": kind, "text": text, "sources": sources or [], "options": options or []}
    return Completion(orjson.dumps(reply).decode())


def candidates(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries a recorded request gave the model: the JSON after GROUNDING_HEADER."""
    grounding = body["messages"][1]["content"]
    if not grounding.startswith(GROUNDING_HEADER):
        return []
    listed = grounding.removeprefix(GROUNDING_HEADER).removesuffix(REPLY_FORMAT).strip()
    return list(orjson.loads(listed))


@dataclass
class FakeLlm:
    """An OpenAI-compatible server: chat completions (plain, or streamed as server-sent chunks when
    asked `stream: true`), and the audio API: `/audio/transcriptions` (multipart; refuses a file
    that is no audio container it knows, as OpenAI does, else answers
    `transcript`, recording what it got) and `/audio/speech` (answers `SPEECH_AUDIO`, Ogg/Opus).
    `script` holds what the next completion requests get, first to last ("ok" once it is empty):
    "ok" (an answer saying LLM_TEXT, citing `prazo-entrega` when that entry was given), a
    `Completion` (that output), an HTTP status such as 500 or 400, ("429", seconds) for a 429 with
    Retry-After, or "hang" (never answers); `audio_script` likewise for transcriptions ("ok" or a
    status). `models`, when given, are the models it has (Ollama's "pulled"): any other is answered
    404 as Ollama answers it; `api_keys`, when given, the keys it takes: any other is answered 401 as
    OpenAI answers it."""

    script: list[Any] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request
    # A model's time per completion, and the calls it is working on (now and at most).
    delay_s: float = 0.0
    in_flight: int = 0
    # Requests whose last message contains this text are answered 500, every time.
    failing_text: str | None = None
    peak_in_flight: int = 0
    transcript: str = PRAZO
    audio_script: list[Any] = field(default_factory=list)
    transcriptions: list[dict[str, Any]] = field(default_factory=list)
    speeches: list[dict[str, Any]] = field(default_factory=list)
    models: set[str] | None = None
    api_keys: set[str] | None = None
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self, port: int | None = None) -> FakeLlm:
        app = web.Application(client_max_size=32 * 2**20)
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/v1/audio/transcriptions", self._transcription)
        app.router.add_post("/v1/audio/speech", self._speech)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        port = port or free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        body = await request.json()
        authorization = request.headers.get("Authorization")
        self.requests.append({"body": body, "authorization": authorization})
        refused = self._refusal(authorization, str(body.get("model")))
        if refused is not None:
            return refused
        step = self.script.pop(0) if self.script else "ok"
        if self.failing_text and self.failing_text in str(body["messages"][-1].get("content", "")):
            step = 500
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return await self._answer(request, body, step)
        finally:
            self.in_flight -= 1

    def _refusal(self, authorization: str | None, model: str) -> web.Response | None:
        """A wrong key (OpenAI's 401) or a model it does not have (Ollama's 404), None when neither."""
        if self.api_keys is not None and authorization not in {f"Bearer {key}" for key in self.api_keys}:
            message = (
                "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
            )
            error = {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=401)
        if self.models is not None and model not in self.models:
            message = f'model "{model}" not found, try pulling it first'
            return web.json_response({"error": {"message": message, "type": "not_found_error"}}, status=404)
        return None

    async def _answer(self, request: web.Request, body: dict[str, Any], step: Any) -> web.StreamResponse:
        if step == "hang":
            await asyncio.Event().wait()
        if isinstance(step, tuple):
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests"}},
                status=429,
                headers={"Retry-After": str(step[1])},
            )
        if isinstance(step, int):
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=step)
        if isinstance(step, Completion):
            content = step.content
        else:
            cited = [entry["id"] for entry in candidates(body) if entry["id"] == "prazo-entrega"]
            content = says("answer", LLM_TEXT, sources=cited).content
        if body.get("stream"):
            return await self._stream(request, body["model"], content)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49},
            }
        )

    async def _stream(self, request: web.Request, model: str, content: str) -> web.StreamResponse:
        """The output word by word, then the usage (stream_options.include_usage), then [DONE]."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion.chunk", "model": model}
        words = content.split(" ")
        for index, word in enumerate(words):
            piece = word if index == 0 else " " + word
            last = index == len(words) - 1
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
            await response.write(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
            await asyncio.sleep(STREAM_PAUSE_S)  # a model generating: the chunks arrive apart
        usage = {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}
        await response.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _transcription(self, request: web.Request) -> web.Response:
        fields: dict[str, Any] = {
            "content_type": request.content_type,
            "authorization": request.headers.get("Authorization"),
        }
        async for part in await request.multipart():
            assert isinstance(part, aiohttp.BodyPartReader)
            if part.name == "file":
                fields |= {"file": bytes(await part.read()), "filename": part.filename}
                fields["file_type"] = part.headers.get("Content-Type")
            else:
                fields[str(part.name)] = await part.text()
        self.transcriptions.append(fields)
        if not fields.get("file", b"").startswith(AUDIO_MAGIC):  # as OpenAI does: not a format it decodes
            return web.json_response(
                {"error": {"message": "Invalid file format.", "type": "invalid_request_error"}}, status=400
            )
        step = self.audio_script.pop(0) if self.audio_script else "ok"
        if isinstance(step, int):
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=step)
        return web.json_response({"text": self.transcript})

    async def _speech(self, request: web.Request) -> web.Response:
        self.speeches.append(await request.json())
        return web.Response(body=SPEECH_AUDIO, content_type="audio/ogg")
