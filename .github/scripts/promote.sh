#!/usr/bin/env bash
# GitOps promotion: pins the pushed image digests in environments/. Dev overlays are committed to
# main (Argo CD syncs them); prod overlays change only through a reviewed pull request.
# Usage: promote.sh <digests dir: <region>/<service> files holding registry/quilla/<service>@sha256:...>
# Env: REVISION (the commit the images were built from), GH_TOKEN.
set -euo pipefail
digests=$1

if [ ! -d environments ]; then
  echo "environments/ does not exist yet: nothing to promote"
  exit 0
fi

git config user.name "quilla-images"
git config user.email "images@users.noreply.github.com"

# Each region's overlays get that region's registry: no cross-country reference (data residency).
pin() {
  local stage=$1
  for file in "$digests"/*/*; do
    local region service
    region=$(basename "$(dirname "$file")")
    service=$(basename "$file")
    [ -d "environments/$region/$stage" ] || continue
    (cd "environments/$region/$stage" && kustomize edit set image "quilla/$service=$(cat "$OLDPWD/$file")")
  done
}

pin dev
git add environments
if git commit -m "Promote images built from $REVISION to dev"; then
  git push origin HEAD:main
fi

branch="promote/prod-$REVISION"
git switch -c "$branch"
pin prod
git add environments
git commit -m "Promote images built from $REVISION to prod" || exit 0
git push origin "$branch"
gh pr create --base main --head "$branch" \
  --title "Promote $REVISION to prod" \
  --body "Pins the images built from $REVISION, already running in dev, in the prod overlays. Argo CD rolls them out region by region once merged."
