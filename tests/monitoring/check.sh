#!/usr/bin/env bash
# The chart's alerts, checked by Prometheus' own code (promtool, built by promtool.sh):
#
#   1. `promtool check rules` on the PrometheusRule that `helm template` renders, with the
#      default values and with every value set (charts/gitdev-operator/ci/all-values.yaml);
#   2. examples/monitoring/prometheus-rules.yaml is that rendering for the release
#      `gitdev-operator` (so that the unit tests below test what the chart installs);
#   3. `promtool test rules tests/monitoring/rules.test.yaml`: each alert fires in one test and
#      stays silent in another (tests/operator_metrics.rs checks that every alert has both).
#
#   tests/monitoring/check.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "check.sh: $*" >&2; exit 1; }

promtool=$(tests/monitoring/promtool.sh | tail -n1)
helm="$(tests/cluster/build.sh | tail -n1)/helm"
[ -x "$helm" ] || die "no helm in the control-plane cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The rules file inside a rendered PrometheusRule: its `spec`, which the template puts last,
# one indentation level less.
rules_of() {
  sed -n '/^spec:$/,$p' | sed '1d; s/^  //'
}

render() { # RELEASE VALUES...
  local release=$1; shift
  HELM_CACHE_HOME="$work/helm" HELM_CONFIG_HOME="$work/helm" HELM_DATA_HOME="$work/helm" \
    "$helm" template "$release" charts/gitdev-operator --namespace gitdev-system \
    --show-only templates/prometheusrule.yaml "$@"
}

echo "== promtool check rules: the chart's PrometheusRule, default values"
render gitdev-operator --set monitoring.prometheusRule.enabled=true | rules_of >"$work/default.yaml"
"$promtool" check rules "$work/default.yaml"

echo "== promtool check rules: the chart's PrometheusRule, every value set"
render gitdev-all -f charts/gitdev-operator/ci/all-values.yaml | rules_of >"$work/all-values.yaml"
"$promtool" check rules "$work/all-values.yaml"

echo "== examples/monitoring/prometheus-rules.yaml is the chart's rendering"
grep -v '^#' examples/monitoring/prometheus-rules.yaml >"$work/example.yaml"
diff -u "$work/example.yaml" "$work/default.yaml" \
  || die "examples/monitoring/prometheus-rules.yaml differs from the chart's rendering (above); regenerate it as its header says"

echo "== promtool test rules"
"$promtool" test rules tests/monitoring/rules.test.yaml
