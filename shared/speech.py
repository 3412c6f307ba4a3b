"""Speech to text and back through an OpenAI-compatible audio API (OpenAI, faster-whisper-server,
LocalAI, vLLM, ...): `POST {base}/audio/transcriptions` (multipart) for the worker, which reads
voice notes, and `POST {base}/audio/speech` for the gateway's delivery, which speaks a reply when
VOICE_REPLIES=on. Audio passes through memory only: it is never logged nor stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import aiohttp

from shared.settings import Settings

log = logging.getLogger(__name__)

# What `/audio/speech` is asked for: Ogg/Opus is what a WhatsApp voice note and a Telegram
# `sendVoice` carry.
SPEECH_FORMAT = "opus"
SPEECH_MIME = "audio/ogg"
MAX_SPEECH_BYTES = 16 * 2**20  # WhatsApp's limit for audio; a reply is seconds long
SPEECH_CHUNK_BYTES = 64 * 1024
MAX_SPEECH_CHARS = 4096  # the `input` limit of OpenAI's speech endpoint


class SpeechError(Exception):
    """The provider gave no usable answer (after the bounded retries, when they could help)."""


@dataclass(frozen=True, slots=True)
class SpeechConfig:
    base_url: str
    api_key: str
    transcription_model: str
    tts_model: str
    tts_voice: str
    timeout_s: float
    max_retries: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SpeechConfig:
        return cls(
            base_url=settings.audio_base_url.rstrip("/"),
            api_key=settings.openai_api_key,
            transcription_model=settings.transcription_model,
            tts_model=settings.tts_model,
            tts_voice=settings.tts_voice,
            timeout_s=settings.media_timeout_s,
            max_retries=settings.transcription_max_retries,
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


async def transcribe(
    session: aiohttp.ClientSession, config: SpeechConfig, audio: bytes, filename: str, mime_type: str
) -> str:
    """The text spoken in `audio`; retried (network errors, 429, 5xx) at most `max_retries` times."""
    for attempt in range(config.max_retries + 1):
        form = aiohttp.FormData()
        form.add_field("model", config.transcription_model)
        form.add_field("response_format", "json")
        form.add_field("file", audio, filename=filename, content_type=mime_type or "application/octet-stream")
        try:
            async with session.post(
                f"{config.base_url}/audio/transcriptions",
                data=form,
                headers=config.headers,
                timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            ) as response:
                if response.status == 200:
                    payload = await response.json(content_type=None)
                    text = payload.get("text") if isinstance(payload, dict) else None
                    if not isinstance(text, str):
                        raise SpeechError("the transcription has no 'text'")
                    return text.strip()
                retriable = response.status == 429 or response.status >= 500
                problem = f"transcription answered HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            retriable, problem = True, f"transcription failed: {type(exc).__name__}"
        except ValueError:
            raise SpeechError("the transcription is not JSON") from None
        if not retriable or attempt == config.max_retries:
            raise SpeechError(problem)
        log.info("%s; retrying (%d of %d)", problem, attempt + 1, config.max_retries)
        await asyncio.sleep(random.uniform(0.1, 0.3) * 2**attempt)
    raise AssertionError("unreachable")


async def synthesise(session: aiohttp.ClientSession, config: SpeechConfig, text: str) -> bytes:
    """`text` spoken, as Ogg/Opus bytes; one try (the text reply has gone out already)."""
    body = {
        "model": config.tts_model,
        "voice": config.tts_voice,
        "input": text[:MAX_SPEECH_CHARS],
        "response_format": SPEECH_FORMAT,
    }
    try:
        async with session.post(
            f"{config.base_url}/audio/speech",
            json=body,
            headers=config.headers,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
        ) as response:
            if response.status != 200:
                raise SpeechError(f"speech answered HTTP {response.status}")
            # The whole stream, chunk by chunk (`read(n)` gives only what has arrived so far).
            audio = bytearray()
            async for chunk in response.content.iter_chunked(SPEECH_CHUNK_BYTES):
                audio += chunk
                if len(audio) > MAX_SPEECH_BYTES:
                    raise SpeechError(f"speech answered over {MAX_SPEECH_BYTES} bytes")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SpeechError(f"speech failed: {type(exc).__name__}") from None
    if not audio:
        raise SpeechError("speech answered no audio")
    return bytes(audio)
