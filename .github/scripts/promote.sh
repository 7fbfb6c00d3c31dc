#!/usr/bin/env bash
# GitOps promotion: pins the pushed image digests in environments/, through pull requests only.
# Nothing is ever pushed to main: the dev overlays and the prod overlays each get a branch,
# promote/dev-<revision> and promote/prod-<revision>, and a pull request, which runs CI like any
# other because it is opened with a GitHub App token (see images.yml). Argo CD syncs what merges.
#
# Usage:
#   promote.sh pin <digests dir>   commit the pins on the two local branches (no network, no token);
#                                  <digests dir> holds <region>/<service> files, each one line
#                                  <registry>/quilla/<service>@sha256:<64 hex>
#   promote.sh open                push those branches and open one pull request each
# Env: REVISION (the commit the images were built from); for `open` also GH_TOKEN (the App's
# installation token), GH_REPO (owner/name) and AUTO_MERGE_DEV ("true" to request auto-merge of
# the dev pull request; GitHub merges it only once main's required checks pass).
set -euo pipefail

stages=(dev prod)
name_pattern='^[a-z0-9][a-z0-9-]*$'

die() {
  echo "promote: $*" >&2
  exit 1
}

[[ ${REVISION:-} =~ ^[0-9a-f]{40}$ ]] || die "REVISION must be a full commit SHA, got '${REVISION:-}'"

branch_of() {
  echo "promote/$1-$REVISION"
}

# Each region's overlays get that region's registry: no cross-country reference (data residency).
pin_stage() {
  local digests=$1 stage=$2 file region service reference
  for file in "$digests"/*/*; do
    [ -f "$file" ] || continue
    region=$(basename "$(dirname "$file")")
    service=$(basename "$file")
    [[ $region =~ $name_pattern && $service =~ $name_pattern ]] || die "unexpected digest file $file"
    reference=$(<"$file")
    [[ $reference =~ ^[a-z0-9.-]+(:[0-9]+)?/quilla/${service}@sha256:[0-9a-f]{64}$ ]] ||
      die "$file does not hold a digest reference of quilla/$service: '$reference'"
    [ -d "environments/$region/$stage" ] || continue
    (cd "environments/$region/$stage" && kustomize edit set image "quilla/$service=$reference")
    # Real digests now: the environment may get its Argo CD Application (gitops/argocd/environments.yaml).
    sed -i 's/^images: placeholder$/images: pinned/' "environments/$region/$stage/region.yaml"
  done
}

pin() {
  local digests=${1:?usage: promote.sh pin <digests dir>} base stage branch
  [ -d "$digests" ] || die "$digests is not a directory"
  if [ ! -d environments ]; then
    echo "environments/ does not exist yet: nothing to promote"
    return
  fi
  git config user.name "quilla-images"
  git config user.email "images@users.noreply.github.com"
  base=$(git rev-parse HEAD)
  for stage in "${stages[@]}"; do
    branch=$(branch_of "$stage")
    git switch --quiet --force-create "$branch" "$base"
    pin_stage "$digests" "$stage"
    git add environments
    if git diff --cached --quiet; then
      echo "$stage: the overlays already pin these digests"
      git switch --quiet --detach "$base"
      git branch --quiet --delete --force "$branch"
      continue
    fi
    # Dated like the base commit, so that a re-run makes the very same commit.
    GIT_AUTHOR_DATE=$(git show --no-patch --format=%cI "$base") \
      GIT_COMMITTER_DATE=$(git show --no-patch --format=%cI "$base") \
      git commit --quiet -m "Promote images built from $REVISION to $stage"
    echo "$stage: committed on $branch"
  done
  git switch --quiet --detach "$base"
}

# The token reaches git through a credential helper that reads it from the environment: it is
# never written to .git/config nor put on a command line.
# shellcheck disable=SC2016 # $GH_TOKEN is expanded by the helper's shell, not here
credential_helper='!f() { test "$1" = get && printf "username=x-access-token\npassword=%s\n" "$GH_TOKEN"; }; f'

git_authenticated() {
  git -c credential.helper= -c "credential.helper=$credential_helper" "$@"
}

# Pushes branch $1 unless origin has it already, and prints the URL of the open pull request
# from it into main, opening one (title $2, body $3) if there is none. Prints nothing, with a
# warning, when origin's branch is not the local commit.
open_pull_request() {
  local branch=$1 title=$2 body=$3 local_head remote_head url
  local_head=$(git rev-parse "refs/heads/$branch")
  remote_head=$(git_authenticated ls-remote --heads origin "refs/heads/$branch" | cut -f1)
  if [ -z "$remote_head" ]; then
    git_authenticated push --quiet origin "refs/heads/$branch:refs/heads/$branch" >&2
  elif [ "$remote_head" != "$local_head" ]; then
    # Never overwritten: someone pushed there, or the overlays changed since the first run.
    echo "::warning::origin's $branch is $remote_head, not $local_head: left as it is, see its pull request" >&2
    return
  fi
  # Only this repository's own branch: a fork can open a pull request from a branch of the same
  # name, and must never be taken for the promotion.
  url=$(gh pr list --head "$branch" --base main --state open --json url,isCrossRepository,headRefOid \
    --jq "[.[] | select((.isCrossRepository | not) and .headRefOid == \"$local_head\")][0].url // empty")
  if [ -z "$url" ]; then
    url=$(gh pr create --base main --head "$branch" --title "$title" --body "$body")
  fi
  echo "$url"
}

open_all() {
  [ -n "${GH_TOKEN:-}" ] || die "GH_TOKEN (the GitHub App token) is not set"
  [ -n "${GH_REPO:-}" ] || die "GH_REPO is not set"
  local dev_branch prod_branch dev_url="" prod_url body
  dev_branch=$(branch_of dev)
  prod_branch=$(branch_of prod)

  if git rev-parse --verify --quiet "refs/heads/$dev_branch" >/dev/null; then
    dev_url=$(open_pull_request "$dev_branch" "Promote $REVISION to dev" \
      "Pins the images built from $REVISION in the dev overlays. Argo CD rolls them out to dev once merged.")
    echo "dev: ${dev_url:-no pull request}"
    if [ -n "$dev_url" ] && [ "${AUTO_MERGE_DEV:-}" = true ]; then
      # Merged by GitHub once main's required checks pass, and only at the commit pushed here.
      gh pr merge "$dev_url" --auto --squash --match-head-commit "$(git rev-parse "refs/heads/$dev_branch")" ||
        echo "::warning::could not enable auto-merge on $dev_url: merge it by hand"
    fi
  fi

  if git rev-parse --verify --quiet "refs/heads/$prod_branch" >/dev/null; then
    body="Pins the images built from $REVISION in the prod overlays. Merge it once they run well in dev"
    if [ -n "$dev_url" ]; then
      body+=" ($dev_url)"
    fi
    body+=". Argo CD rolls them out region by region once merged."
    prod_url=$(open_pull_request "$prod_branch" "Promote $REVISION to prod" "$body")
    echo "prod: ${prod_url:-no pull request}"
  fi
}

case ${1:-} in
  pin)
    shift
    pin "$@"
    ;;
  open)
    open_all
    ;;
  *)
    die "usage: promote.sh pin <digests dir> | promote.sh open"
    ;;
esac
