#!/usr/bin/env bash
# Deploys the token broker to Azure, as the README's "Deploying to Azure" walks
# through it: a Flex Consumption function app (Linux, custom handler) with a
# system-assigned managed identity, Azure Managed Redis (TLS on port 10000, OSS
# cluster policy: REDIS_CLUSTER=true), a Key Vault with RBAC (you get "Key Vault
# Secrets Officer" to write the secrets, the app "Key Vault Secrets User" to read
# them), an app registration for the broker (Graph application permissions with
# admin consent, an app role and api:// URI for Entra callers), the package built
# by scripts/package.sh, and a final check of /api/tokens/health.
#
# Needs: az (logged in with `az login`, rights to create app registrations and to
# grant admin consent, or an existing AZURE_CLIENT_ID), the build tools of
# scripts/package.sh. Re-running it updates what exists.
#
# Settings (environment):
#   APP (required)          name of the function app; other resources derive from it
#   RG=$APP-rg  LOC=westeurope  STORAGE=<derived from APP>
#   PLAN=flex               flex (Flex Consumption) or consumption (Linux Consumption,
#                           retiring 30 September 2028)
#   AZURE_CLIENT_ID         an existing app registration to use; else one is created
#   GRAPH_APP_ROLES="User.Read.All"   Graph application permissions to grant it
#   TOKEN_SCOPES=https://graph.microsoft.com/.default
#   TOKEN_REFRESH_SCHEDULE="0 */5 * * * *"
#   REDIS_SKU=Balanced_B0
set -euo pipefail
cd "$(dirname "$0")/.."

: "${APP:?set APP to the function app name}"
RG=${RG:-$APP-rg}
LOC=${LOC:-westeurope}
PLAN=${PLAN:-flex}
lower=$(echo "$APP" | tr '[:upper:]' '[:lower:]')
STORAGE=${STORAGE:-$(echo "${lower}sa" | tr -cd 'a-z0-9' | cut -c1-24)}
# Vault names: 3-24 characters, no trailing hyphen.
KV_NAME=${KV_NAME:-$(echo "$lower-kv" | cut -c1-24 | sed 's/-*$//')}
REDIS_NAME=${REDIS_NAME:-$APP-redis}
REDIS_SKU=${REDIS_SKU:-Balanced_B0}
GRAPH_APP_ROLES=${GRAPH_APP_ROLES:-User.Read.All}
TOKEN_SCOPES=${TOKEN_SCOPES:-https://graph.microsoft.com/.default}
TOKEN_REFRESH_SCHEDULE=${TOKEN_REFRESH_SCHEDULE:-0 */5 * * * *}
GRAPH_API=00000003-0000-0000-c000-000000000000

step() { printf '\n== %s\n' "$*"; }

# Retries a command (role assignments take a while to reach Key Vault and Graph).
retry() {
    local tries=0
    until "$@"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 20 ]; then
            echo "deploy-azure: gave up after 20 tries: $*" >&2
            return 1
        fi
        sleep 15
    done
}

TENANT=$(az account show --query tenantId -o tsv)
ME=$(az ad signed-in-user show --query id -o tsv)

step "resource group $RG and storage account $STORAGE"
az group create -n "$RG" -l "$LOC" -o none
az storage account create -n "$STORAGE" -g "$RG" -l "$LOC" --sku Standard_LRS \
    --allow-blob-public-access false -o none

step "function app $APP ($PLAN)"
if ! az functionapp show -n "$APP" -g "$RG" -o none 2>/dev/null; then
    case "$PLAN" in
        flex)
            # Flex Consumption names the runtime in functionAppConfig (no
            # FUNCTIONS_WORKER_RUNTIME setting); ask which custom version it offers.
            version=$(az functionapp list-flexconsumption-runtimes -l "$LOC" --runtime custom \
                --query '[0].version' -o tsv)
            az functionapp create -n "$APP" -g "$RG" --storage-account "$STORAGE" \
                --flexconsumption-location "$LOC" --runtime custom \
                --runtime-version "$version" -o none
            ;;
        consumption)
            az functionapp create -n "$APP" -g "$RG" --storage-account "$STORAGE" \
                --consumption-plan-location "$LOC" --os-type Linux --runtime custom \
                --functions-version 4 -o none
            ;;
        *)
            echo "deploy-azure: PLAN must be flex or consumption" >&2
            exit 1
            ;;
    esac
fi
PRINCIPAL=$(az functionapp identity assign -n "$APP" -g "$RG" --query principalId -o tsv)

step "Azure Managed Redis $REDIS_NAME ($REDIS_SKU, TLS, port 10000, OSS cluster)"
if ! az redisenterprise show --cluster-name "$REDIS_NAME" -g "$RG" -o none 2>/dev/null; then
    # Access keys are off by default on new instances; the service logs in with one.
    # (The flag's name differs between CLI versions: ask this one.)
    keys_flag=$(az redisenterprise create --help 2>/dev/null |
        grep -o -- '--access-keys-auth[a-z-]*' | head -n1 || true)
    az redisenterprise create --cluster-name "$REDIS_NAME" -g "$RG" -l "$LOC" \
        --sku "$REDIS_SKU" --clustering-policy OSSCluster "${keys_flag:---access-keys-auth}" Enabled \
        --minimum-tls-version 1.2 -o none
fi
REDIS_HOSTNAME=$(az redisenterprise show --cluster-name "$REDIS_NAME" -g "$RG" --query hostName -o tsv)

step "app registration"
if [ -z "${AZURE_CLIENT_ID:-}" ]; then
    # Display names are not unique, and anyone may register one: only an app
    # you own is reused (from an earlier run), and only when it is the one.
    mine=$(az ad app list --show-mine --display-name "$APP" --query '[].appId' -o tsv)
    case $(printf '%s' "$mine" | grep -c .) in
        0) AZURE_CLIENT_ID=$(az ad app create --display-name "$APP" \
            --sign-in-audience AzureADMyOrg --query appId -o tsv) ;;
        1) AZURE_CLIENT_ID=$mine ;;
        *)
            echo "deploy-azure: you own several app registrations named $APP; set AZURE_CLIENT_ID to the one to use" >&2
            exit 1
            ;;
    esac
    az ad sp show --id "$AZURE_CLIENT_ID" -o none 2>/dev/null ||
        az ad sp create --id "$AZURE_CLIENT_ID" -o none
fi
# Entra callers: api://{client id} and an app role to assign to callers'
# identities, added to what the app already has (az replaces the whole lists).
uris=$(az ad app show --id "$AZURE_CLIENT_ID" --query identifierUris -o tsv)
if ! grep -qx "api://$AZURE_CLIENT_ID" <<<"$uris"; then
    # shellcheck disable=SC2086 # one argument per URI
    az ad app update --id "$AZURE_CLIENT_ID" --identifier-uris $uris "api://$AZURE_CLIENT_ID"
fi
role_id=$(az ad app show --id "$AZURE_CLIENT_ID" \
    --query "appRoles[?value=='Tokens.Read'].id | [0]" -o tsv)
if [ -z "$role_id" ]; then
    roles=$(az ad app show --id "$AZURE_CLIENT_ID" --query appRoles -o json |
        python3 -c 'import json, sys, uuid
roles = json.load(sys.stdin)
roles.append({"allowedMemberTypes": ["Application"], "displayName": "Read tokens",
              "value": "Tokens.Read", "id": str(uuid.uuid4()), "isEnabled": True,
              "description": "Read tokens from the broker"})
print(json.dumps(roles))')
    az ad app update --id "$AZURE_CLIENT_ID" --app-roles "$roles"
fi
# Graph application permissions, then admin consent (needs a Global or Privileged
# Role Administrator; without it the consent step fails and says so).
for permission in $GRAPH_APP_ROLES; do
    id=$(az ad sp show --id "$GRAPH_API" --query "appRoles[?value=='$permission'].id | [0]" -o tsv)
    if [ -z "$id" ]; then
        echo "deploy-azure: Microsoft Graph has no application permission named $permission" >&2
        exit 1
    fi
    az ad app permission add --id "$AZURE_CLIENT_ID" --api "$GRAPH_API" \
        --api-permissions "$id=Role" -o none
done
retry az ad app permission admin-consent --id "$AZURE_CLIENT_ID"

step "Key Vault $KV_NAME (RBAC) and the secrets"
az keyvault show -n "$KV_NAME" -o none 2>/dev/null ||
    az keyvault create -n "$KV_NAME" -g "$RG" -l "$LOC" --enable-rbac-authorization true -o none
KV_ID=$(az keyvault show -n "$KV_NAME" --query id -o tsv)
# An RBAC vault gives its creator no data-plane role: writing secrets needs this.
az role assignment create --assignee-object-id "$ME" --assignee-principal-type User \
    --role "Key Vault Secrets Officer" --scope "$KV_ID" -o none
az role assignment create --assignee-object-id "$PRINCIPAL" --assignee-principal-type ServicePrincipal \
    --role "Key Vault Secrets User" --scope "$KV_ID" -o none
# The Officer role takes a while to reach the vault: wait for it once, so that
# each secret below is piped exactly once (a retried pipe would be empty).
retry az keyvault secret list --vault-name "$KV_NAME" -o none
# Secrets go from one az command into the next, never through the terminal.
set_secret() { az keyvault secret set --vault-name "$KV_NAME" -n "$1" --file /dev/stdin -o none; }
az redisenterprise database list-keys --cluster-name "$REDIS_NAME" -g "$RG" \
    --query primaryKey -o tsv | tr -d '\n' | set_secret redis-password
if ! az keyvault secret show --vault-name "$KV_NAME" -n client-secret -o none 2>/dev/null; then
    az ad app credential reset --id "$AZURE_CLIENT_ID" --append --display-name "$APP" \
        --years 1 --query password -o tsv | tr -d '\n' | set_secret client-secret
fi
if ! az keyvault secret show --vault-name "$KV_NAME" -n encryption-key -o none 2>/dev/null; then
    openssl rand -base64 32 | tr -d '\n' | set_secret encryption-key
fi
KV="https://$KV_NAME.vault.azure.net/secrets"

step "app settings"
settings=(
    "AZURE_TENANT_ID=$TENANT"
    "AZURE_CLIENT_ID=$AZURE_CLIENT_ID"
    "AZURE_CLIENT_SECRET=@Microsoft.KeyVault(SecretUri=$KV/client-secret/)"
    "AGENT_TOKEN_FLOW=${AGENT_TOKEN_FLOW:-client_credentials}"
    "TOKEN_SCOPES=$TOKEN_SCOPES"
    "TOKEN_REFRESH_SCHEDULE=$TOKEN_REFRESH_SCHEDULE"
    "REDIS_HOST=$REDIS_HOSTNAME"
    "REDIS_PORT=10000"
    "REDIS_SSL=true"
    "REDIS_CLUSTER=true"
    "REDIS_PASSWORD=@Microsoft.KeyVault(SecretUri=$KV/redis-password/)"
    "TOKEN_ENCRYPTION_KEY=@Microsoft.KeyVault(SecretUri=$KV/encryption-key/)"
    "TOKEN_API_AUTH=entra"
    "TOKEN_API_CALLERS=[{\"name\":\"callers\",\"role\":\"Tokens.Read\",\"scopes\":[\"*\"],\"users\":[\"*\"]}]"
    "LOG_FORMAT=json"
)
if [ "$PLAN" = consumption ]; then
    settings+=("FUNCTIONS_WORKER_RUNTIME=custom")
fi
az functionapp config appsettings set -n "$APP" -g "$RG" --settings "${settings[@]}" -o none

step "package and deploy"
scripts/package.sh
az functionapp deployment source config-zip -g "$RG" -n "$APP" --src dist/token-broker.zip -o none

step "check: https://$APP.azurewebsites.net/api/tokens/health"
host=$(az functionapp show -n "$APP" -g "$RG" --query defaultHostName -o tsv)
for _ in $(seq 1 40); do
    if body=$(curl -fsS --max-time 10 "https://$host/api/tokens/health" 2>/dev/null); then
        echo "$body"
        case "$body" in
            *'"status":"healthy"'*)
                echo "deploy-azure: deployed and healthy"
                exit 0
                ;;
        esac
    fi
    sleep 15
done
echo "deploy-azure: /api/tokens/health did not say healthy within 10 minutes (see the last answer above, and the app's logs: az webapp log tail -g $RG -n $APP)" >&2
exit 1
