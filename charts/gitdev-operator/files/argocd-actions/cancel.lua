-- Argo CD resource action `cancel` of git.dev Deployments: spec.cancel = true. The operator
-- cancels the deployment in progress (Ready, reason Cancelled) and holds new ones off until
-- `resume` (docs/gitdeployment-resource.md).

if obj.spec == nil then
  obj.spec = {}
end
obj.spec.cancel = true
return obj
