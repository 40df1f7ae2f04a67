-- Argo CD resource action `redeploy` of git.dev Deployments: a new deployment of the same spec,
-- as `kubectl rollout restart` does for a workload. The operator deploys again whenever
-- spec.redeploy changes (docs/gitdeployment-resource.md); any new value will do.
--
-- The new value is `argocd-<n>`, one more than the current `argocd-<n>` (or `argocd-1` after any
-- other value or none), rather than a timestamp: it needs nothing from the sandbox (whether `os`
-- is there differs between Argo CD versions), two clicks within the same second still give two
-- different values, and the result is the same on every Argo CD. It is never equal to the
-- current value, which is all a redeploy needs.

if obj.spec == nil then
  obj.spec = {}
end

local count = nil
if type(obj.spec.redeploy) == "string" then
  local digits = string.match(obj.spec.redeploy, "^argocd%-(%d+)$")
  if digits ~= nil then
    count = tonumber(digits)
  end
end
-- Past nine digits (someone wrote a long number by hand), start again: still a new value, and
-- string.format("%d") of a float that large is not portable.
if count == nil or count >= 999999999 then
  obj.spec.redeploy = "argocd-1"
else
  obj.spec.redeploy = "argocd-" .. string.format("%d", count + 1)
end
return obj
