-- Argo CD resource actions for git.dev Deployments (`gitdeployments.git.dev`): which of
-- `redeploy`, `cancel` and `resume` the resource's Actions menu offers, and which it greys out.
--
-- Installed with the three action scripts next to this file as
-- `resource.customizations.actions.git.dev_Deployment` in the `argocd-cm` ConfigMap
-- (examples/argocd/argocd-cm.yaml embeds them), or with the Helm chart's `argocd.actions.enabled`.
-- Lua 5.1, as Argo CD's gopher-lua runs it: the live object is the global `obj`; the script
-- returns a table of the actions, each with `disabled`.
--
-- Every action only edits the spec; the operator does the rest (docs/gitdeployment-resource.md):
--   redeploy  a new spec.redeploy value makes a new deployment of the same spec. Greyed out while
--             spec.cancel is true: the operator holds every deployment off until `resume`.
--   cancel    spec.cancel = true. Offered only while there is something to cancel: a deployment
--             in progress (Reconciling=True), or a spec the operator has not observed yet (a new
--             object, a redeploy just asked for). On a finished deployment it would cancel
--             nothing and only hold the next one off.
--   resume    spec.cancel = false, which deploys again. Offered only while spec.cancel is true.
-- Nothing is offered on an object being deleted: the operator is cleaning it up.
-- tests/argocd_actions.rs runs this file on an object in each state.

local actions = {}

-- As in health.lua: Argo CD runs each script on its own, with no way to share a function.
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

local metadata = obj.metadata or {}
local spec = obj.spec or {}
local status = obj.status

local deleting = metadata.deletionTimestamp ~= nil
local cancelled = spec.cancel == true

-- The same test as the health check's: conditions written for an older spec say nothing about
-- this one, so until the operator observes it there may be a deployment to stop.
local generation = metadata.generation
local unobserved = status == nil or status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation)
local reconciling = find_condition(status, "Reconciling")
local in_progress = unobserved or (reconciling ~= nil and reconciling.status == "True")

actions["redeploy"] = {["disabled"] = deleting or cancelled}
actions["cancel"] = {["disabled"] = deleting or cancelled or not in_progress}
actions["resume"] = {["disabled"] = deleting or not cancelled}
return actions
