#!/usr/bin/env bash
# Checks SafeHub's gRPC contracts (protos/), in order:
#   1. buf lint (STANDARD + COMMENTS, see protos/buf.yaml);
#   2. buf breaking (FILE rules) against the protos on the base branch (default `main`), skipped
#      with a note when there is no such branch or the protos do not exist on it yet;
#   3. drift of the generated code in safehub/gen (python tools/gen_protos.py --check).
# Exits non-zero at the first failing check. Runs offline (no buf dependencies, no registry).
#
# Environment:
#   PROTOS_BASE_BRANCH   branch to check compatibility against (default: main; the local branch,
#                        else the remote-tracking origin/<branch>)
#   PROTOS_AGAINST_MODE  `git` (default): buf reads the branch from .git, falling back to an
#                        exported copy if buf cannot read it (shallow clone, worktree ...);
#                        `archive`: always compare against an exported copy (git archive)
#   PYTHON               interpreter with grpcio-tools and mypy-protobuf (default: python3)
#   BUF                  buf binary (default: buf on PATH, else next to $PYTHON)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BASE_BRANCH="${PROTOS_BASE_BRANCH:-main}"
AGAINST_MODE="${PROTOS_AGAINST_MODE:-git}"
PYTHON="${PYTHON:-python3}"

log() { printf 'check_protos: %s\n' "$*" >&2; }

if [[ -z "${BUF:-}" ]]; then
  if command -v buf >/dev/null 2>&1; then
    BUF="$(command -v buf)"
  else
    py_bin_dir="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
    BUF="$py_bin_dir/buf"
  fi
fi
if [[ ! -x "$BUF" ]] && ! command -v "$BUF" >/dev/null 2>&1; then
  log "buf not found (pip install buf-bin, or set BUF)"
  exit 2
fi

# buf exits 100 when it reports findings (lint problems, breaking changes), other non-zero
# codes when it could not run the check at all.
readonly BUF_FINDINGS=100

log "1/3 buf lint protos"
"$BUF" lint protos

# Compares protos/ with an exported copy of the base revision's protos/.
breaking_against_archive() {
  local tmp rc=0
  tmp="$(mktemp -d)"
  if git archive --format=tar "$base_rev" -- protos | tar -x -C "$tmp"; then
    "$BUF" breaking protos --against "$tmp/protos" || rc=$?
  else
    log "could not export protos/ from '$base_rev'"
    rc=2
  fi
  rm -rf "$tmp"
  return "$rc"
}

breaking_status=skipped
base_rev=""
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  log "2/3 note: not a git checkout; skipping buf breaking"
elif git rev-parse --verify --quiet "refs/heads/$BASE_BRANCH" >/dev/null; then
  base_rev="$BASE_BRANCH"
elif git rev-parse --verify --quiet "refs/remotes/origin/$BASE_BRANCH" >/dev/null; then
  # CI checkouts of a feature branch often have only the remote-tracking branch.
  base_rev="origin/$BASE_BRANCH"
  AGAINST_MODE=archive
else
  log "2/3 note: no '$BASE_BRANCH' branch; skipping buf breaking"
fi

if [[ -n "$base_rev" ]]; then
  base_files="$(git ls-tree -r --name-only "$base_rev" -- protos)"
  if ! grep -q '\.proto$' <<<"$base_files"; then
    log "2/3 note: no protos on '$base_rev' yet; skipping buf breaking"
  else
    rc=0
    if [[ "$AGAINST_MODE" == "archive" ]]; then
      log "2/3 buf breaking protos against '$base_rev' (exported copy)"
      breaking_against_archive || rc=$?
    else
      log "2/3 buf breaking protos --against .git#branch=$base_rev,subdir=protos"
      "$BUF" breaking protos --against ".git#branch=$base_rev,subdir=protos" || rc=$?
      if [[ $rc -ne 0 && $rc -ne $BUF_FINDINGS ]]; then
        log "buf could not read '$base_rev' from .git (exit $rc); retrying on an exported copy"
        rc=0
        breaking_against_archive || rc=$?
      fi
    fi
    if [[ $rc -eq $BUF_FINDINGS ]]; then
      log "breaking changes against '$base_rev' (see above); add a new version package" \
        "(safehub.<area>.v2) instead of changing v1"
      exit 1
    elif [[ $rc -ne 0 ]]; then
      log "buf breaking failed to run (exit $rc)"
      exit "$rc"
    fi
    breaking_status="passed against $base_rev"
  fi
fi

log "3/3 generated code drift (python tools/gen_protos.py --check)"
"$PYTHON" tools/gen_protos.py --check

log "all checks passed (buf breaking: $breaking_status)"
