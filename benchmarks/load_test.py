"""Load test of `uld serve` against plain vLLM's OpenAI server on the same target, on loopback,
in one run: concurrent chat requests, half streaming, mixed over no forget set, two forget
sets and custom alphas (plain vLLM gets the same requests without ULD fields).

    python benchmarks/load_test.py                                   # SmolLM2, 500 requests
    python benchmarks/load_test.py --soak 600 --concurrency 64       # 10 minutes of load, RSS sampled
    python benchmarks/load_test.py --target tiny-random --requests 64 --skip-plain   # CI size
    python benchmarks/load_test.py --offline                         # the same requests, engines only

Reports per server: throughput (completion tokens/s), p50/p99 time to first token and time
per output token (streamed requests), failures (a 5xx, a lost connection or a timeout), and
whether each greedy answer equals the answer to the same request sent alone, one at a time.
In soak mode, the resident memory of the server's processes (each, and their sum) over time. The client is
asyncio + httpx with a bounded number of connections and a deadline on every request: vLLM's
`vllm bench serve` cannot send per-request forget sets or check answers, and the checks are
what this test is for. Without --forget-set, two forget sets are trained a few steps (speed
and equality do not depend on how well they unlearn) and cached under $ULD_HOME/bench/load.
"""
import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
KEY = "load-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list, log: Path, url: str, deadline_s: float = 600) -> subprocess.Popen:
    from uld_serve.engine.llm import engine_environment

    engine_environment()  # plain vLLM gets the CPU settings `uld serve` uses
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit(f"server did not start in {deadline_s:.0f} s; see {log}")


def stop(process: subprocess.Popen) -> None:
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def rss_by_process_mib(pid: int) -> dict:
    """RSS in MiB of each process in the server's tree, by "name:pid" (the API server and vLLM's
    engine core grow for different reasons, so the soak keeps them apart)."""
    import psutil

    out = {}
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            out[f"{proc.name()}:{proc.pid}"] = round(proc.memory_info().rss / 2**20, 1)
    except psutil.Error:
        pass
    return out


def kinds(uld: bool) -> list:
    """The request mixes: (extra body fields, label)."""
    if not uld:
        return [({}, "plain")]
    return [({}, "no forget set"), ({"model": "f1"}, "f1"), ({"model": "f2"}, "f2"), ({"model": "f1", "alpha": 1.5}, "f1 alpha 1.5")]


def make_requests(questions: list, count: int, uld: bool, seed: int = 0) -> list:
    rng = random.Random(seed)
    mixes = kinds(uld)
    requests = []
    for i in range(count):
        extra, label = mixes[i % len(mixes)]
        question = questions[rng.randrange(len(questions))]
        requests.append({"key": (question, label), "stream": i % 2 == 1, "label": label,
                         "body": {"model": "target", "messages": [{"role": "user", "content": question}], "temperature": 0,
                                  **extra}})
    return requests


async def send(client: httpx.AsyncClient, url: str, request: dict, max_tokens: int, timeout_s: float) -> dict:
    body = {**request["body"], "max_tokens": max_tokens, "stream": request["stream"]}
    started = time.perf_counter()
    result = {"ok": False, "status": None, "text": None, "ttft": None, "tpot": None, "tokens": 0}
    try:
        async with asyncio.timeout(timeout_s):
            if not request["stream"]:
                response = await client.post(f"{url}/v1/chat/completions", json=body)
                result["status"] = response.status_code
                if response.status_code == 200:
                    data = response.json()
                    result.update(ok=True, text=data["choices"][0]["message"]["content"], tokens=data["usage"]["completion_tokens"])
                return result
            body["stream_options"] = {"include_usage": True}
            pieces, first, last = [], None, None
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
                result["status"] = response.status_code
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        result["tokens"] = event["usage"]["completion_tokens"]
                    for choice in event.get("choices") or []:
                        if choice.get("delta", {}).get("content"):
                            now = time.perf_counter()
                            first = first or now
                            last = now
                            pieces.append(choice["delta"]["content"])
            if response.status_code == 200:
                result.update(ok=True, text="".join(pieces))
                if first is not None:
                    result["ttft"] = first - started
                    if result["tokens"] > 1:
                        result["tpot"] = (last - first) / (result["tokens"] - 1)
    except (httpx.HTTPError, TimeoutError) as e:
        result["error"] = type(e).__name__
    return result


async def run_load(url: str, requests: list, concurrency: int, max_tokens: int, timeout_s: float) -> tuple:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits, timeout=timeout_s) as client:
        async def one(request):
            async with gate:
                return await send(client, url, request, max_tokens, timeout_s)

        started = time.perf_counter()
        results = await asyncio.gather(*(one(r) for r in requests))
        return results, time.perf_counter() - started


async def serial_answers(url: str, requests: list, max_tokens: int, timeout_s: float) -> dict:
    """The answer to each distinct request, sent alone."""
    answers = {}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=timeout_s) as client:
        for request in requests:
            if request["key"] not in answers:
                answers[request["key"]] = (await send(client, url, {**request, "stream": False}, max_tokens, timeout_s))["text"]
    return answers


def percentile(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def report(name: str, results: list, seconds: float, requests: list, serial: dict) -> dict:
    failures = sum(not r["ok"] or (r["status"] or 0) >= 500 for r in results)
    equal = sum(r["ok"] and r["text"] == serial.get(q["key"]) for r, q in zip(results, requests))
    tokens = sum(r["tokens"] for r in results)
    row = {"server": name, "requests": len(results), "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1),
           "ttft_p50_ms": round(1000 * percentile([r["ttft"] for r in results], 50), 1),
           "ttft_p99_ms": round(1000 * percentile([r["ttft"] for r in results], 99), 1),
           "tpot_p50_ms": round(1000 * percentile([r["tpot"] for r in results], 50), 1),
           "tpot_p99_ms": round(1000 * percentile([r["tpot"] for r in results], 99), 1),
           "failures": failures, "equal_to_serial": equal,
           "statuses": dict(sorted({str(s): sum(r["status"] == s for r in results) for s in {r["status"] for r in results}}.items()))}
    print(f"| {name} | {row['requests']} | {row['seconds']} | {row['tokens_per_s']} | {row['ttft_p50_ms']} / {row['ttft_p99_ms']} | "
          f"{row['tpot_p50_ms']} / {row['tpot_p99_ms']} | {failures} | {equal}/{len(results)} |", flush=True)
    return row


async def soak(url: str, pid: int, questions: list, uld: bool, seconds: float, concurrency: int, max_tokens: int,
               timeout_s: float) -> dict:
    """`concurrency` clients sending mixed requests back to back for `seconds`, RSS sampled every 10 s."""
    end, samples, results, rng = time.time() + seconds, [], [], random.Random(1)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, limits=limits, timeout=timeout_s) as client:
        async def worker(index):
            while time.time() < end:
                request = make_requests(questions, 1, uld, seed=rng.randrange(10**9))[0]
                request["stream"] = index % 2 == 1
                results.append(await send(client, url, request, max_tokens, timeout_s))

        async def sampler():
            started = time.time()
            while time.time() < end:
                by_process = rss_by_process_mib(pid)
                samples.append((round(time.time() - started), round(sum(by_process.values()), 1), by_process))
                await asyncio.sleep(10)

        await asyncio.gather(sampler(), *(worker(i) for i in range(concurrency)))
    return {"requests": len(results), "failures": sum(not r["ok"] for r in results),
            "latency_p99_ms": round(1000 * percentile([r["ttft"] for r in results], 99), 1), **rss_growth(samples)}


def rss_growth(samples: list, warmup_s: float = 60) -> dict:
    """From (seconds, total MiB, {process: MiB}) samples: the growth after warm-up, in all and per process."""
    warm = [(total, by) for t, total, by in samples if t >= warmup_s] or [(total, by) for _, total, by in samples]
    (first, first_by), (last, last_by) = warm[0], warm[-1]
    return {"rss_after_warmup_mib": first, "rss_end_mib": last, "rss_growth_pct": round(100 * (last - first) / first, 2),
            "rss_growth_mib_by_process": {name: round(last_by[name] - first_by[name], 1) for name in last_by if name in first_by},
            "rss_samples": samples}


def offline(target: Path, sets: dict, questions: list, count: int, max_tokens: int, rounds: int = 3) -> None:
    """The same request mix through the engines without a server: UldEngine against vLLM's LLM
    on the chat prompts vLLM's server builds, all requests at once, greedy, max_tokens each;
    interleaved rounds after a warm-up. This is the engine's ratio for the load test's own mix,
    the yardstick for the servers' ratio."""
    import statistics

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from uld_serve.core.models import load_tokenizer
    from uld_serve.core.requests import GenerationRequest
    from uld_serve.engine.llm import UldEngine, engine_environment

    engine_environment()
    tokenizer = load_tokenizer(target)
    requests = make_requests(questions, count, True)
    # As vLLM's server does: the template rendered as text, then tokenized without special tokens.
    prompts = [tokenizer.encode(tokenizer.apply_chat_template(r["body"]["messages"], add_generation_prompt=True, tokenize=False),
                                add_special_tokens=False) for r in requests]
    uld_requests = [GenerationRequest(p, None if r["body"]["model"] == "target" else r["body"]["model"], alpha=r["body"].get("alpha"),
                                      max_new_tokens=max_tokens) for p, r in zip(prompts, requests)]
    plain = LLM(model=str(target), dtype="float32", max_model_len=1024, seed=0)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    engine = UldEngine(target, sets, max_model_len=1024)
    runs = {"plain vLLM": lambda: [len(o.outputs[0].token_ids) for o in plain.generate(
                [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)],
            "vLLM + ULD": lambda: [len(t) for t in engine.generate(uld_requests, use_tqdm=False)]}
    for run in runs.values():
        run()
    rates = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            tokens = sum(run())
            rates[name].append(tokens / (time.perf_counter() - started))
    engine.close()
    plain.llm_engine.engine_core.shutdown()
    ratio = statistics.median(u / b for u, b in zip(rates["vLLM + ULD"], rates["plain vLLM"]))
    print("| engine (no server) | tokens/s, median of rounds | vs plain vLLM, median of per-round ratios |")
    print("|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {ratio if name == 'vLLM + ULD' else 1.0:.2f}x |")


def forget_sets_for(target: Path, given: list) -> dict:
    if given:
        return dict(zip(("f1", "f2"), given))
    from uld_serve.core.models import uld_home
    from uld_training.assistant import AssistantConfig, train_assistant
    from uld_training.loop import TrainConfig

    sets = {}
    for name, forget in (("f1", "tofu:forget01"), ("f2", "tofu:forget05[:40]")):
        out = uld_home() / "bench" / "load" / f"{name}-{target.name}"
        if not out.exists():
            train_assistant(str(target), forget, "tofu:retain90[:200]", out, TrainConfig(max_steps=3, lr=1e-3, batch_size=8),
                            AssistantConfig())
        sets[name] = out
    return sets


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="smollm2-135m-instruct")
    parser.add_argument("--forget-set", action="append", default=[], help="two forget-set directories (default: trained)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=500, help="requests in flight at once (default: all)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=600, help="deadline of each request, seconds")
    parser.add_argument("--skip-plain", action="store_true", help="leave out plain vLLM (the CI size)")
    parser.add_argument("--soak", type=float, default=0, help="seconds of back-to-back load instead of one burst")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--offline", action="store_true", help="time the engines on the same requests, without servers")
    args = parser.parse_args()

    from uld_serve.core.models import resolve_model
    from uld_serve.core.tofu import load_qa

    target = resolve_model(args.target)
    sets = forget_sets_for(target, args.forget_set)
    questions = [qa.question for qa in load_qa("tofu:forget01")][:20] + ["What is the capital of France?", "Who wrote Hamlet?"]
    if args.offline:
        print(f"{args.requests} chat requests (the load test's mix), max_tokens {args.max_tokens}, greedy; target {target.name}, "
              f"{os.cpu_count()} cores")
        return offline(target, sets, questions, args.requests, args.max_tokens)
    work = Path(tempfile.mkdtemp(prefix="uld-load-"))
    env_python = sys.executable
    servers = [("uld serve", True)] + ([] if args.skip_plain else [("plain vLLM", False)])
    rows = []
    load = (f"{args.soak:g} s of load from {args.concurrency} clients" if args.soak
            else f"{args.requests} chat requests, {args.concurrency} at once")
    print(f"{load}, half streaming, max_tokens {args.max_tokens}, greedy; target {target.name}, {os.cpu_count()} cores")
    if not args.soak:
        print("| server | requests | seconds | tokens/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | failures | equal to serial |")
        print("|---|---|---|---|---|---|---|---|")
    for name, uld in servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if uld:
            command = [env_python, "-m", "uld_serve.cli", "serve", "--target", str(target), "--served-model-name", "target",
                       "--port", str(port), "--api-key", KEY, "--registry", str(work / "registry.json"), "--audit-log", "off",
                       "--max-in-flight", "0", "--request-timeout", "0", "--max-loras", "2", "--max-model-len", "1024",
                       *[a for n, p in sets.items() for a in ("--forget-set", f"{n}={p}")]]
        else:
            command = [env_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(target), "--served-model-name",
                       "target", "--port", str(port), "--api-key", KEY, "--dtype", "float32", "--max-model-len", "1024"]
        process = start(command, work / f"{'uld' if uld else 'plain'}.log", url)
        try:
            if args.soak:
                result = asyncio.run(soak(url, process.pid, questions, uld, args.soak, args.concurrency, args.max_tokens, args.timeout))
                print(f"soak {name}: " + json.dumps({k: v for k, v in result.items() if k != "rss_samples"}), flush=True)
                rows.append({"server": name, **result})
                continue
            requests = make_requests(questions, args.requests, uld)
            serial = asyncio.run(serial_answers(url, requests, args.max_tokens, args.timeout))
            results, seconds = asyncio.run(run_load(url, requests, args.concurrency, args.max_tokens, args.timeout))
            rows.append(report(name, results, seconds, requests, serial))
        finally:
            stop(process)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
