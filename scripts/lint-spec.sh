#!/usr/bin/env bash
# The committed contract (openapi.json) against the ecosystem's linters, pinned in
# tools/spec-lint/package.json: Redocly CLI's recommended rules with no error, Spectral's
# spectral:oas with no finding at all; then a TypeScript client generated from it
# (openapi-typescript) that a small use of it type-checks against. CI runs it.
set -euo pipefail
cd "$(dirname "$0")/../tools/spec-lint"
npm ci --no-audit --no-fund --loglevel=error
bin=node_modules/.bin
"$bin/redocly" lint ../../openapi.json --config redocly.yaml --format stylish
"$bin/spectral" lint ../../openapi.json --ruleset .spectral.yaml --fail-severity hint
"$bin/openapi-typescript" ../../openapi.json --output generated/api.ts --silent
"$bin/tsc" --project tsconfig.json
echo "the contract lints clean and its generated client type-checks"
