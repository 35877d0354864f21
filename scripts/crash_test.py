#!/usr/bin/env python3
"""Crash safety of `moe train` (issue 23, item 1): SIGKILL at random moments, then resume.

Each trial starts a small training run (the `tiny` preset on a text made of docs/*.md), kills it
with SIGKILL after a random delay (uniform over the length of an uninterrupted run, so kills land
during steps, during checkpoint writes and sometimes after the end), then checks that
  1. the newest checkpoint the run directory names loads (`moe generate --checkpoint`, which
     verifies every file's checksum), and
  2. `moe train --resume --out DIR` (no other flag: the run recorded its data) finishes the
     schedule with every step's loss and gradient norm and every validation loss equal, bit for
     bit, to those of an uninterrupted run.
Runs with a checkpoint after every step (most kills then land inside a checkpoint write) and
every 7 steps alternate. With --mpi every run is `mpirun -np 2 moe train --expert-parallel 2`
(needs `cargo build --release --features mpi`), the kill hits one rank chosen at random, and the
script also times how long the job takes to end after it (the other rank must not hang).
Prints a Markdown table for RELIABILITY.md.

    python3 scripts/crash_test.py --trials 100            # about 5 minutes on 2 cores
    python3 scripts/crash_test.py --trials 50 --mpi       # about 10 minutes
"""
import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time


MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]


def launcher(moe, mpi):
    return MPIRUN + [moe] if mpi else [moe]


def train_args(moe, out, data, steps, every, mpi=False):
    ep = ["--expert-parallel", "2"] if mpi else []
    return launcher(moe, mpi) + ["train", "--preset", "tiny", "--data", data, "--steps", str(steps),
                                 "--checkpoint-every", str(every), "--eval-every", "10", "--log-every", "1",
                                 "--sample-tokens", "0", "--quiet", "--precision", "fp32", "--out", out] + ep


def kill_one_rank(proc, rng):
    """SIGKILL to one rank (a child of mpirun); returns False when none is running."""
    kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    if not kids:
        return False
    os.kill(int(rng.choice(kids)), signal.SIGKILL)
    return True


def trace(out):
    """Every train and validation line of a run's metrics, as exact JSON numbers."""
    rows = []
    for line in open(os.path.join(out, "metrics.jsonl")):
        r = json.loads(line)
        if r["kind"] == "train":
            rows.append(("train", r["m"]["step"], repr(r["m"]["loss"]), repr(r["m"]["grad_norm"])))
        else:
            rows.append(("val", r["step"], repr(r["val_loss"])))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--moe-bin", default="target/release/moe")
    p.add_argument("--work", default="runs/crash-test")
    p.add_argument("--mpi", action="store_true")
    a = p.parse_args()
    rng = random.Random(a.seed)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    data = os.path.join(a.work, "corpus.txt")
    with open(data, "w") as f:
        for doc in sorted(glob.glob("docs/*.md")):
            f.write(open(doc).read())
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    refs, lengths = {}, {}
    for every in (1, 7):
        out = os.path.join(a.work, f"reference-{every}")
        t0 = time.time()
        subprocess.run(train_args(a.moe_bin, out, data, a.steps, every, a.mpi), check=True, **quiet)
        lengths[every] = time.time() - t0
        refs[every] = trace(out)

    counts = dict(trials=0, killed=0, in_write=0, no_checkpoint=0, unreadable=0, mismatch=0, failed_resume=0,
                  hung=0)
    end_times = []
    for i in range(a.trials):
        every = (1, 7)[i % 2]
        out = os.path.join(a.work, f"trial-{i:03d}")
        proc = subprocess.Popen(train_args(a.moe_bin, out, data, a.steps, every, a.mpi), **quiet)
        delay = rng.uniform(0, 1.1 * lengths[every])
        time.sleep(delay)
        if proc.poll() is None:
            if a.mpi:
                if kill_one_rank(proc, rng):
                    counts["killed"] += 1
                    t_kill = time.time()
                    try:
                        proc.wait(timeout=60)
                        end_times.append(time.time() - t_kill)
                    except subprocess.TimeoutExpired:
                        counts["hung"] += 1
                        ps = subprocess.run(["ps", "-o", "pid,stat,etime,cmd", "--ppid", str(proc.pid)],
                                            capture_output=True, text=True).stdout
                        print(f"trial {i}: the job did not end within 60 s of the kill ({delay:.2f} s into "
                              f"the run); still running:\n{ps}", file=sys.stderr)
                        proc.kill()
            else:
                proc.send_signal(signal.SIGKILL)
                counts["killed"] += 1
        proc.wait()
        counts["trials"] += 1
        root = os.path.join(out, "checkpoints")
        if glob.glob(os.path.join(root, ".step-*.tmp-*")):
            counts["in_write"] += 1  # a checkpoint's temporary directory was left behind
        if os.path.exists(os.path.join(root, "latest")):
            load = subprocess.run([a.moe_bin, "generate", "--checkpoint", out, "--max-tokens", "1", "--prompt", "a"],
                                  **quiet)
            if load.returncode != 0:
                counts["unreadable"] += 1
                print(f"trial {i}: newest checkpoint does not load: {load.stderr.strip()}", file=sys.stderr)
            ep = ["--expert-parallel", "2"] if a.mpi else []
            resume = launcher(a.moe_bin, a.mpi) + ["train", "--resume", "--out", out, "--quiet",
                                                   "--sample-tokens", "0"] + ep
        else:
            counts["no_checkpoint"] += 1
            resume = train_args(a.moe_bin, out, data, a.steps, every, a.mpi)
        r = subprocess.run(resume, **quiet)
        if r.returncode != 0:
            counts["failed_resume"] += 1
            print(f"trial {i}: resume failed: {r.stderr.strip()}", file=sys.stderr)
        elif trace(out) != refs[every]:
            counts["mismatch"] += 1
            print(f"trial {i}: resumed run differs from the uninterrupted one", file=sys.stderr)
        shutil.rmtree(out)
        print(f"trial {i + 1}/{a.trials}: {counts}", file=sys.stderr, flush=True)

    c = counts
    mode = "mpirun -np 2, one rank killed" if a.mpi else "single process"
    ends = (f" | {sorted(end_times)[len(end_times) // 2]:.2f} s / {max(end_times):.2f} s | {c['hung']}"
            if end_times else "")
    print("| run | trials | killed mid-run | kills inside a checkpoint write | before the first checkpoint "
          "| unreadable newest checkpoint | failed resumes | resumes not bit-exact |"
          + (" job end after the kill, median / max | hung jobs |" if a.mpi else ""))
    print("|---|" + "---:|" * (7 + 2 * a.mpi))
    print(f"| {mode} | {c['trials']} | {c['killed']} | {c['in_write']} | {c['no_checkpoint']} | {c['unreadable']} "
          f"| {c['failed_resume']} | {c['mismatch']}{ends} |")
    return 1 if c["unreadable"] or c["mismatch"] or c["failed_resume"] or c["hung"] else 0


if __name__ == "__main__":
    sys.exit(main())
