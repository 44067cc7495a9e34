#!/usr/bin/env bash
# virtplan in a CI pipeline: plan on every pull request, apply the reviewed plans on merge.
#
#   virtplan-ci.sh plan OUT STACK...
#       Plans each stack and writes, in folder OUT:
#         <stack>.plan.json  the saved plan (what the merge will apply, exactly)
#         plan.md            one Markdown document for all stacks, to post as a PR comment
#         summary.env        CHANGES=0|1 and DESTRUCTIVE=<number of destructive changes>
#       Exit status (virtplan's --detailed-exitcode): 0 no changes, 2 changes to review,
#       1 an error (the error is in plan.md too).
#
#   virtplan-ci.sh apply OUT [--allow-destroy]
#       Applies every OUT/*.plan.json exactly as reviewed. A plan is refused if the stack
#       file or the hosts changed since it was made ("stale plan ...; run plan again").
#
# Environment: VIRTPLAN, the command to run (default: virtplan); VIRTPLAN_LOCK_TIMEOUT,
# seconds apply waits for a concurrent apply (default 600). Nothing else has to survive
# between the jobs but OUT: virtplan keeps its records and locks on the hosts. Run it from
# the repository root: plans name their stack files relative to it.
set -uo pipefail

VIRTPLAN=${VIRTPLAN:-virtplan}

usage() {
  sed -n '2,22p' "$0" >&2
  exit 1
}

plan() {
  [ $# -ge 2 ] || usage
  local out=$1 stack name rc status=0 changes=0 destructive=0 n
  shift
  mkdir -p "$out"
  : > "$out/plan.md"
  for stack in "$@"; do
    name=$(basename "$stack" .py)
    rm -f "$out/$name.plan.json"
    # shellcheck disable=SC2086  # VIRTPLAN may be a command with arguments
    $VIRTPLAN plan "$stack" --out "$out/$name.plan.json" --format markdown --detailed-exitcode \
      > "$out/$name.md" 2> "$out/$name.err"
    rc=$?
    case $rc in
      0) ;;
      2) changes=1 ;;
      *)
        status=1
        rm -f "$out/$name.plan.json"
        {
          printf '### virtplan plan for `%s` failed\n\n```\n' "$stack"
          cat "$out/$name.err"
          printf '```\n'
        } > "$out/$name.md"
        ;;
    esac
    cat "$out/$name.md" >> "$out/plan.md"
    printf '\n' >> "$out/plan.md"
    if [ -f "$out/$name.plan.json" ]; then
      # one change per line in the saved plan's "destructive" field: a string, or null
      n=$(grep -c '^      "destructive": "' "$out/$name.plan.json" || true)
      destructive=$((destructive + n))
    fi
  done
  printf 'CHANGES=%s\nDESTRUCTIVE=%s\n' "$changes" "$destructive" > "$out/summary.env"
  cat "$out/plan.md"
  if [ "$status" != 0 ]; then
    return 1
  fi
  [ "$changes" = 0 ] && return 0
  return 2
}

apply() {
  [ $# -ge 1 ] || usage
  local out=$1 saved
  shift
  shopt -s nullglob
  local plans=("$out"/*.plan.json)
  if [ ${#plans[@]} -eq 0 ]; then
    echo "virtplan-ci: no saved plans in $out (was the pull request planned?)" >&2
    return 1
  fi
  for saved in "${plans[@]}"; do
    # shellcheck disable=SC2086
    $VIRTPLAN apply "$saved" --lock-timeout "${VIRTPLAN_LOCK_TIMEOUT:-600}" "$@" || return 1
  done
}

case "${1:-}" in
  plan) shift; plan "$@" ;;
  apply) shift; apply "$@" ;;
  *) usage ;;
esac
