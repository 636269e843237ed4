# shellcheck shell=bash
# Shared by up.sh and down.sh (sourced, not run). Bash >= 4, Linux /proc.
#
# How the processes of one local cluster are tracked (nothing is ever found by name, so other Ray
# instances on the machine -- other users, other tests -- are never touched, and a process is
# signalled only when it provably belongs to this cluster):
#   1. Every node is started with PTYCHO_DIST_CLUSTER_ID=<random id> in its environment, inherited by
#      everything Ray spawns; a process whose /proc/PID/environ carries it is a member (this also
#      catches job drivers, which open a session of their own).
#   2. up.sh starts each node as `setsid ray start --block ...`: the 'ray start' process leads a new
#      session that holds GCS, raylet, dashboard, agents and Ray workers. Its PID is recorded in
#      state.env. The members of that session count only while its leader still carries the id:
#      after a reboot or a crash the PID (and so the session id) may belong to an unrelated process,
#      whose session is then left alone. (The session catches processes that renamed themselves
#      -- ray::IDLE, ray::DashboardAgent, via setproctitle -- which may overwrite /proc/PID/environ.)
#   3. Descendants of members.

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

# True when /proc/$2/environ carries PTYCHO_DIST_CLUSTER_ID=$1.
has_cluster_id() {
  tr '\0' '\n' <"/proc/$2/environ" 2>/dev/null | grep -qx -- "PTYCHO_DIST_CLUSTER_ID=$1"
}

# PIDs of cluster $1 (see the top of this file); $2... are the recorded session leaders. Zombies count
# too (they vanish once their parent, also of the cluster, is gone), so "empty" means really gone.
cluster_pids() {
  local id=$1 pid line rest ppid session f leader
  shift
  local -A parent=() member=()
  local sessions=" "
  for leader in "$@"; do  # trust a recorded session only while its leader carries this cluster's id
    has_cluster_id "$id" "$leader" && sessions+="$leader "
  done
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

# True when PID $1 is alive, still the 'ray start' leading its own session, and carries cluster $2's
# id (guards PID reuse: a recycled PID, even of another 'ray start', is not ours).
is_node_leader() {
  local line rest state session
  { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${line##*) }
  read -r state _ _ session _ <<<"$rest"
  [ "$session" = "$1" ] && [ "$state" != Z ] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "ray start" \
    && has_cluster_id "$2" "$1"
}
