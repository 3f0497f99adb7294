-- Argo CD health check for tidal.dev/InferenceService (runs in Argo CD's Lua 5.1 sandbox).
-- Healthy: the Ready condition is True for the current generation, which includes a model scaled to
-- zero on purpose (reason ScaledToZero). Degraded: the spec cannot run (Valid=False: a bad pool, a
-- missing Secret) or the rollout exceeded its deadline. Anything else is Progressing: the operator has
-- not seen this generation yet, or the model is still loading.
local hs = {status = "Progressing", message = "Waiting for the Tidal operator to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation or 0
if (obj.status.observedGeneration or 0) < generation then
  hs.message = "Waiting for the Tidal operator to observe generation " .. generation
  return hs
end
local ready, valid = nil, nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then ready = condition end
  if condition.type == "Valid" then valid = condition end
end
if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = (valid.reason or "Invalid") .. ": " .. (valid.message or "")
  return hs
end
if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
elseif ready.reason == "ProgressDeadlineExceeded" then
  hs.status = "Degraded"
end
hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
return hs
