-- Argo CD health check for git.dev Deployments (`gitdeployments.git.dev`, made by gitdev-operator).
--
-- Install it as `resource.customizations.health.git.dev_Deployment` in the `argocd-cm` ConfigMap
-- (examples/argocd/argocd-cm.yaml embeds this file), or with the Helm chart's
-- `argocd.healthCheck.enabled`. Lua 5.1, as Argo CD's gopher-lua runs it: the live object is the
-- global `obj`; the script returns a table with `status` and `message`.
--
-- The operator keeps three kstatus conditions on every object it has reconciled: Ready,
-- Reconciling and Stalled (README, "Status and conditions"). In order:
--   metadata.deletionTimestamp set            -> Progressing (remote clean-up before the finalizer goes)
--   no status.observedGeneration, or older
--   than metadata.generation                  -> Progressing (the operator has not seen this spec yet)
--   Stalled=True                              -> Degraded    ("<reason>: <message>": a human must act)
--   Ready=True                                -> Healthy     (Succeeded, or Cancelled as spec.cancel asked)
--   Reconciling=True with reason Paused       -> Suspended   (git.dev/paused holds back a create or cancel)
--   anything else                             -> Progressing (the Reconciling message)
-- tests/gitops_health.rs runs this file on objects captured from a real API server in each state.

local hs = {}

local function find_condition(status, condition_type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function is_true(condition)
  return condition ~= nil and condition.status == "True"
end

local function describe(condition)
  local reason = condition.reason or ""
  local message = condition.message or ""
  if reason == "" then
    return message
  end
  if message == "" then
    return reason
  end
  return reason .. ": " .. message
end

local metadata = obj.metadata or {}
local status = obj.status

if metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "being deleted: the operator releases the object once the remote deployments are cleaned up"
  -- While deleting, the operator reports Reconciling/Deleting, or Stalled/CleanupBlocked when the
  -- token is unusable (remote deployments are orphaned after the grace period): say which.
  local stalled = find_condition(status, "Stalled")
  local reconciling = find_condition(status, "Reconciling")
  if is_true(stalled) then
    hs.message = hs.message .. " (" .. describe(stalled) .. ")"
  elseif is_true(reconciling) and reconciling.reason == "Deleting" then
    hs.message = hs.message .. " (" .. describe(reconciling) .. ")"
  end
  return hs
end

local generation = metadata.generation
if status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "waiting for the operator to observe the object"
  end
  return hs
end

local stalled = find_condition(status, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local ready = find_condition(status, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

local reconciling = find_condition(status, "Reconciling")
-- A pause that holds nothing back keeps the health it had (Healthy when live); one that holds
-- back a new deployment or a cancel is the deliberate stop Argo CD calls Suspended.
if is_true(reconciling) and reconciling.reason == "Paused" then
  hs.status = "Suspended"
  hs.message = reconciling.message or "paused by the git.dev/paused annotation"
  return hs
end

hs.status = "Progressing"
if reconciling ~= nil and (reconciling.message or "") ~= "" then
  hs.message = reconciling.message
else
  hs.message = "waiting for the operator"
end
return hs
