#!/usr/bin/env bash
# Proves the README's Slurm job array (`roundtrip run ... --shard K/N`, then `roundtrip merge`)
# runs as written on a real scheduler, and that the merged report equals a single-machine run's.
#
#   cargo build --release            # first: this script builds nothing
#   sudo scripts/slurm-check.sh      # as root, on a Debian/Ubuntu machine; takes a few minutes
#
# What it does:
#   1. installs Slurm and munge from the distribution's packages (slurmctld slurmd slurm-client
#      munge) if they are missing (apt-get update once; services are not started by apt);
#   2. brings up a one-node Slurm cluster on this machine: a private munged (system key
#      /etc/munge/munge.key, created if missing; socket in a temporary folder), a minimal
#      slurm.conf in that folder (no cgroups: proctrack/linuxproc, task/none, no accounting; the
#      node's real CPUs and memory from `slurmd -C`; one partition), slurmctld and slurmd in the
#      background with their logs in the temporary folder; nothing is written under /etc/slurm;
#   3. submits the README's job array over 3 shards of prompts/shapes.txt (--preset shapes,
#      --steps $STEPS) and a merge job with --dependency=afterok:<array job id>;
#   4. waits for them, runs the same command once without --shard on this machine, and compares
#      the merged report.json with the single run's (ignoring `seconds` timings and the run
#      folders' own paths), then every file of the two folders (same names; JSON compared the same
#      way, the rest byte for byte): prints PASS or FAIL and exits 1 on FAIL;
#   5. on exit, cancels its jobs, stops the daemons it started and removes the temporary folder
#      (SLURM_CHECK_KEEP=1 keeps it). Installed packages stay installed.
#
# Environment: ROUNDTRIP (binary, default target/release/roundtrip), STEPS (default 20),
# SLURM_CHECK_TIMEOUT (seconds to wait for the jobs, default 1800), SLURM_CHECK_KEEP=1.
# Not for CI: it installs packages and starts daemons as root.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd -P)
ROUNDTRIP=${ROUNDTRIP:-target/release/roundtrip}
STEPS=${STEPS:-20}
TIMEOUT=${SLURM_CHECK_TIMEOUT:-1800}
SHARDS=3
PROMPTS=prompts/shapes.txt

say() { printf '[slurm-check %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { say "FAIL: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (installs packages, starts slurmctld/slurmd/munged)"
[[ -x $ROUNDTRIP ]] || die "no binary at $ROUNDTRIP: run \`cargo build --release\` first (or set ROUNDTRIP)"
ROUNDTRIP=$(realpath "$ROUNDTRIP")
[[ -f $PROMPTS ]] || die "$PROMPTS missing"
command -v python3 >/dev/null || die "python3 is needed for the comparison"

# ---------------------------------------------------------------------------------------------
# 1. packages
missing=()
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
command -v munged >/dev/null || missing+=(munge)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # Keep apt from starting the packages' services: a temporary policy-rc.d if none exists.
    temp_policy=
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        temp_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { [[ -z $temp_policy ]] || rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
    [[ -z $temp_policy ]] || rm -f /usr/sbin/policy-rc.d
fi
SLURM_VERSION=$(slurmctld -V)
say "$SLURM_VERSION, $(munged --version 2>&1 | head -1)"

# ---------------------------------------------------------------------------------------------
# 2. a one-node cluster
WORK=$(mktemp -d /tmp/slurm-check.XXXXXX)
chmod 755 "$WORK" # munged (user munge) must reach its socket folder
RUNS=$WORK/runs
mkdir -p "$WORK"/{log,state,spool,bin} "$RUNS"
install -d -o munge -g munge -m 755 "$WORK/munge"
ln -s "$ROUNDTRIP" "$WORK/bin/roundtrip" # the jobs call `roundtrip` as the README does
export PATH=$WORK/bin:$PATH
export SLURM_CONF=$WORK/slurm.conf

munged_pid= slurmctld_pid= slurmd_pid= job_ids=
cleanup() {
    local rc=$?
    set +e
    if [[ -n $job_ids && -n $slurmctld_pid ]]; then
        scancel ${job_ids//,/ } 2>/dev/null
        sleep 2
    fi
    [[ $rc == 0 ]] || for f in "$WORK"/log/* "$WORK"/munge/munged.log; do
        [[ $f == */slurm*.out && -s ${f%.out}.log ]] && continue # the same lines as the .log
        [[ -s $f ]] && { echo "--- tail of $f"; tail -n 15 "$f"; }
    done
    for pid in $slurmd_pid $slurmctld_pid $munged_pid; do
        kill "$pid" 2>/dev/null
    done
    for pid in $slurmd_pid $slurmctld_pid $munged_pid; do
        for _ in {1..50}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    done
    [[ -z $slurmd_pid$slurmctld_pid$munged_pid ]] || say "stopped the daemons started here"
    if [[ ${SLURM_CHECK_KEEP:-} == 1 ]]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# munge: the system key (created if missing), a private daemon and socket.
KEY=/etc/munge/munge.key
if [[ ! -s $KEY ]]; then
    say "creating $KEY"
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then
        runuser -u munge -- mungekey --create --keyfile="$KEY"
    else
        dd if=/dev/urandom bs=1 count=1024 of="$KEY" status=none
        chown munge:munge "$KEY"
    fi
    chmod 400 "$KEY"
fi
MUNGE_SOCKET=$WORK/munge/munge.socket.2
runuser -u munge -- munged --key-file="$KEY" --socket="$MUNGE_SOCKET" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munge/munged.log" \
    --seed-file="$WORK/munge/munged.seed" ||
    { cat "$WORK/munge/munged.log" 2>/dev/null; die "munged did not start"; }
munged_pid=$(cat "$WORK/munge/munged.pid")
munge --socket="$MUNGE_SOCKET" -n </dev/null | unmunge --socket="$MUNGE_SOCKET" >/dev/null ||
    die "munge round trip failed"

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }
port=6817
until port_free $port && port_free $((port + 1)); do port=$((port + 2)); done

# The node line as slurmd sees this machine: NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
NODE_LINE=$(slurmd -C | head -1)
NODE=$(sed 's/^NodeName=\([^ ]*\).*/\1/' <<<"$NODE_LINE")
cat >"$SLURM_CONF" <<EOF
ClusterName=roundtrip-check
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
DependencyParameters=kill_invalid_depend
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=check Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
say "slurm.conf: $NODE_LINE, ports $port/$((port + 1))"

slurmctld -D -c -f "$SLURM_CONF" >"$WORK/log/slurmctld.out" 2>&1 &
slurmctld_pid=$!
for _ in {1..60}; do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping | grep -q UP || die "slurmctld is not answering"
slurmd -D -f "$SLURM_CONF" >"$WORK/log/slurmd.out" 2>&1 &
slurmd_pid=$!
for _ in {1..60}; do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    kill -0 $slurmd_pid 2>/dev/null || die "slurmd exited"
    sleep 0.5
done
[[ $state == idle ]] || die "node $NODE is '$state', not idle"
say "cluster up: $(sinfo -h -o '%P %D nodes %c CPUs %m MB %t')"

# ---------------------------------------------------------------------------------------------
# 3. the README's job array and merge job
ARGS="$PROMPTS --preset shapes --steps $STEPS"
cat >"$WORK/shards.sbatch" <<EOF
#!/bin/bash
#SBATCH --array=1-$SHARDS
#SBATCH --job-name=roundtrip-shards
#SBATCH --chdir=$REPO
#SBATCH --output=$WORK/log/shard-%a.out
roundtrip run $ARGS --out $RUNS/shard-\$SLURM_ARRAY_TASK_ID --shard \$SLURM_ARRAY_TASK_ID/$SHARDS --quiet
EOF
cat >"$WORK/merge.sbatch" <<EOF
#!/bin/bash
#SBATCH --job-name=roundtrip-merge
#SBATCH --chdir=$REPO
#SBATCH --output=$WORK/log/merge.out
roundtrip merge $RUNS/shard-{1..$SHARDS} --out $RUNS/all
EOF
t0=$(date +%s.%N)
array_id=$(sbatch --parsable "$WORK/shards.sbatch")
array_id=${array_id%%;*}
merge_id=$(sbatch --parsable --dependency=afterok:"$array_id" "$WORK/merge.sbatch")
merge_id=${merge_id%%;*}
job_ids=$array_id,$merge_id
say "submitted array job $array_id (tasks 1-$SHARDS) and merge job $merge_id (afterok:$array_id)"

# ---------------------------------------------------------------------------------------------
# 4. wait, single run, compare
deadline=$((SECONDS + TIMEOUT))
last=
while :; do
    queue=$(squeue -h -j "$job_ids" -o '%i:%t' 2>/dev/null | sort | tr '\n' ' ')
    [[ -z $queue ]] && break
    [[ $queue == "$last" ]] || say "queue: $queue"
    last=$queue
    ((SECONDS < deadline)) || die "jobs not finished after ${TIMEOUT}s"
    sleep 2
done
t1=$(date +%s.%N)

ok=1
for id in $array_id $merge_id; do
    while read -r line; do
        get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $line"; }
        jid=$(get JobId) task=$(get ArrayTaskId) st=$(get JobState) ec=$(get ExitCode)
        say "job ${task:+${array_id}_$task = }$jid $(get JobName): $st exit $ec, $(get StartTime) .. $(get EndTime), run time $(get RunTime)"
        [[ $st == COMPLETED && $ec == 0:0 ]] || ok=0
    done < <(scontrol -o show job "$id")
done
for f in "$WORK"/log/shard-*.out "$WORK"/log/merge.out; do
    [[ -s $f ]] && sed "s|^|  $(basename "$f"): |" "$f"
done
((ok)) || die "a Slurm job did not complete"
[[ -f $RUNS/all/report.json ]] || die "the merge job wrote no $RUNS/all/report.json"
say "Slurm: array + merge done in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s"

say "single-machine run: roundtrip run $ARGS --out $RUNS/single --quiet"
t2=$(date +%s.%N)
roundtrip run $ARGS --out "$RUNS/single" --quiet
t3=$(date +%s.%N)
say "single run done in $(python3 -c "print(f'{$t3 - $t2:.1f}')") s"

python3 - "$RUNS/all" "$RUNS/single" <<'EOF'
import json, os, sys

merged_dir, single_dir = (os.path.abspath(p) for p in sys.argv[1:3])

def load(folder, rel):
    """A JSON file of a run folder, without `seconds` keys and with the folder's own path masked."""
    with open(os.path.join(folder, rel)) as f:
        doc = json.load(f)
    names = {folder, os.path.realpath(folder)}

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items() if k != "seconds"}
        if isinstance(x, list):
            return [clean(v) for v in x]
        if isinstance(x, str) and x.rstrip("/") in names:
            return "<run folder>"
        return x

    return clean(doc)

def diff(a, b, path="$", out=None):
    out = [] if out is None else out
    if type(a) is not type(b):
        out.append(f"{path}: merged {a!r} != single {b!r}")
    elif isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'single' if k in b else 'merged'}")
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: merged {a!r} != single {b!r}")
    return out

def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, fs in os.walk(folder) for f in fs)

# The required check: report.json.
merged, single = load(merged_dir, "report.json"), load(single_dir, "report.json")
d = diff(merged, single)
if d:
    print(f"FAIL: merged report.json differs from the single run's in {len(d)} place(s):")
    print("\n".join("  " + line for line in d[:20]))
    sys.exit(1)
print(f"report.json: merged == single ({len(merged.get('phrases', []))} phrases; `seconds` ignored)")

# Beyond it: the merged folder holds the single run's files (JSON as above, the rest byte for byte).
fm, fs = files(merged_dir), files(single_dir)
problems = [f"only in merged: {p}" for p in sorted(set(fm) - set(fs))]
problems += [f"only in single: {p}" for p in sorted(set(fs) - set(fm))]
for rel in sorted(set(fm) & set(fs)):
    if rel.endswith(".json"):
        if diff(load(merged_dir, rel), load(single_dir, rel)):
            problems.append(f"differs: {rel}")
    else:
        with open(os.path.join(merged_dir, rel), "rb") as a, open(os.path.join(single_dir, rel), "rb") as b:
            if a.read() != b.read():
                problems.append(f"differs: {rel}")
if problems:
    print(f"FAIL: the merged run folder differs from the single run's in {len(problems)} file(s):")
    print("\n".join("  " + p for p in problems[:20]))
    sys.exit(1)
print(f"run folders: the same {len(fm)} files (JSON ignoring `seconds`, the others byte for byte)")
EOF
say "PASS: $SLURM_VERSION, array job $array_id ($SHARDS shards) + merge job $merge_id: the merged run equals the single-machine run"
