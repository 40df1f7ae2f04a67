-- Argo CD resource action `resume` of git.dev Deployments: spec.cancel = false, which lifts a
-- cancel. After a cancel the operator made, it creates a new deployment of the spec
-- (docs/gitdeployment-resource.md).

if obj.spec == nil then
  obj.spec = {}
end
obj.spec.cancel = false
return obj
