# shellcheck shell=bash
# Shared by up.sh and down.sh (sourced, not run). Bash >= 4, Linux /proc.
#
# How the processes of one local cluster are tracked (nothing is ever found by name, so other Ray
# instances on the machine -- other users, other tests -- are never touched):
#   1. up.sh starts each node as `setsid ray start --block ...`: the 'ray start' process leads a new
#      session, and GCS, raylet, dashboard, agents and Ray workers all stay in that session. Its PID
#      (= session id) is recorded in state.env.
#   2. Every node is started with PTYCHO_DIST_CLUSTER_ID=<random id> in its environment, inherited by
#      everything Ray spawns. This catches processes that open a session of their own (a job's
#      driver, started with start_new_session=True). It is best effort only: processes that rename
#      themselves (ray::IDLE, ray::DashboardAgent, via setproctitle) may overwrite /proc/PID/environ,
#      which is why the session id comes first.
#   3. Descendants of all of the above.

die() { echo "error: $*" >&2; exit 1; }
note() { echo "$*" >&2; }

# The `ray` executable: $RAY if set, else the repository's venv, else `ray` on PATH.
find_ray() {
  local repo=$1
  if [ -n "${RAY:-}" ]; then
    command -v "$RAY" >/dev/null 2>&1 || die "RAY=$RAY is not an executable"
    command -v "$RAY"
  elif [ -x "$repo/.venv/bin/ray" ]; then
    echo "$repo/.venv/bin/ray"
  elif command -v ray >/dev/null 2>&1; then
    command -v ray
  else
    die "no ray executable: create the venv (see README.md), put ray on PATH, or set RAY=/path/to/ray"
  fi
}

# PIDs of cluster $1 whose sessions are led by the PIDs $2..., one per line. Zombies count too (they
# vanish once their parent, also of the cluster, is gone), so "empty" means really gone.
cluster_pids() {
  local id=$1 pid line rest ppid session f
  shift
  local -A parent=() member=()
  local sessions=" $* "
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    pid=${line%% *}
    rest=${line##*) }  # the command name may hold spaces and parentheses: skip past the last ')'
    read -r _ ppid _ session _ <<<"$rest"
    parent[$pid]=$ppid
    [[ $sessions == *" $session "* ]] && member[$pid]=1
  done
  while read -r f; do
    pid=${f#/proc/}; pid=${pid%/environ}
    [ -n "${parent[$pid]:-}" ] && member[$pid]=1
  done < <(grep -lzx -- "PTYCHO_DIST_CLUSTER_ID=$id" /proc/[0-9]*/environ 2>/dev/null)
  local grown=1
  while [ "$grown" = 1 ]; do  # add descendants until nothing changes
    grown=0
    for pid in "${!parent[@]}"; do
      if [ -z "${member[$pid]:-}" ] && [ -n "${member[${parent[$pid]}]:-}" ]; then
        member[$pid]=1 grown=1
      fi
    done
  done
  unset "member[$$]" "member[$BASHPID]"
  for pid in "${!member[@]}"; do echo "$pid"; done | sort -n
}

# Waits up to $1 seconds until cluster_pids "${@:2}" is empty; returns 1 on timeout.
wait_cluster_gone() {
  local deadline=$((SECONDS + $1))
  shift
  while [ -n "$(cluster_pids "$@")" ]; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

# True when PID $1 is alive and still the 'ray start' leading its own session (guards PID reuse).
is_node_leader() {
  local line rest state session
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${line##*) }
  read -r state _ _ session _ <<<"$rest"
  [ "$session" = "$1" ] && [ "$state" != Z ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "ray start"
}
