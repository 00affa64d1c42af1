-- GENERATED from plugin/src/schema.ts by `npm run schema:lua`: do not edit by hand.
-- The schema payg-pluginserver dumps, as a Lua module for Kong Konnect (hybrid mode).
return {
  name = "payg",
  fields = {
    {
      config = {
        type = "record",
        fields = {
          {
            control_service_url = {
              type = "string",
              required = true,
              match = "^https?://",
              description = "Base URL of the payg control service, e.g. http://payg-control:8080.",
            },
          },
          {
            control_service_urls = {
              type = "array",
              required = false,
              elements = {
                type = "string",
                match = "^https?://",
              },
              description = "More replicas of the control service, tried in order when the one in use fails (refused, 5xx or timeout).",
            },
          },
          {
            consumer_field = {
              type = "string",
              required = true,
              default = "custom_id",
              one_of = { "custom_id", "username", "id" },
              description = "Which field of the authenticated consumer identifies the Stripe customer.",
            },
          },
          {
            timeout_ms = {
              type = "integer",
              required = true,
              default = 250,
              between = { 1, 60000 },
              description = "Milliseconds allowed for one call to the control service.",
            },
          },
          {
            cache_ttl_ms = {
              type = "integer",
              required = true,
              default = 5000,
              between = { 0, 3600000 },
              description = "Upper bound in milliseconds on how long a block or an allow without a lease is reused (the service may ask for less). A lease is drawn on until its own ttl_ms, whatever this says.",
            },
          },
          {
            stale_ttl_ms = {
              type = "integer",
              required = true,
              default = 60000,
              between = { 0, 86400000 },
              description = "Milliseconds a cached decision may still serve while the control service is failing.",
            },
          },
          {
            fail_open = {
              type = "boolean",
              required = true,
              default = true,
              description = "With no usable decision: let the request through (true) or answer 503 (false).",
            },
          },
          {
            report_usage = {
              type = "boolean",
              required = true,
              default = true,
              description = "Send one usage event per request from the log phase to POST /v1/usage.",
            },
          },
          {
            control_service_token = {
              type = "string",
              required = false,
              referenceable = true,
              encrypted = true,
              description = "Bearer token sent on every call to the control service; may be a Kong vault reference.",
            },
          },
          {
            usage_units_header = {
              type = "string",
              required = false,
              description = "A response header in which the upstream reports the units a request used (e.g. X-Usage-Units); sent with usage as header_units, for routes priced per unit. A value that is not a plain non-negative integer is charged the route max_cost.",
            },
          },
          {
            credit_header = {
              type = "string",
              required = false,
              description = "A response header set on requests allowed on a lease with the remaining credit in the smallest currency unit, as this node knows it: never rising except after a top-up (docs/plugin-credit-header.md).",
            },
          },
          {
            queue = {
              type = "record",
              required = true,
              fields = {
                {
                  max_batch_size = {
                    type = "integer",
                    required = true,
                    default = 200,
                    between = { 1, 10000 },
                    description = "Most usage events sent to the control service in one POST /v1/usage.",
                  },
                },
                {
                  max_coalescing_delay = {
                    type = "number",
                    required = true,
                    default = 0.2,
                    between = { 0, 3600 },
                    description = "Seconds a usage event may wait for others to fill a batch before the batch is sent. Usage reaches the control service this much later, so it bounds how long spent credit goes unseen.",
                  },
                },
                {
                  max_entries = {
                    type = "integer",
                    required = true,
                    default = 10000,
                    between = { 1, 1000000 },
                    description = "Most usage events held in memory; when full, new events are dropped and counted.",
                  },
                },
                {
                  max_bytes = {
                    type = "integer",
                    required = false,
                    description = "Most bytes of usage events (as JSON) held in memory; when full, new events are dropped and counted. Unset: no byte bound.",
                  },
                },
                {
                  max_retry_time = {
                    type = "number",
                    required = true,
                    default = 3600,
                    description = "Seconds a failing batch is retried before its usage is dropped (and logged); -1 retries for ever.",
                  },
                },
                {
                  initial_retry_delay = {
                    type = "number",
                    required = true,
                    default = 0.1,
                    between = { 0.001, 1000000 },
                    description = "Seconds before the first retry of a failed batch; doubles on each retry.",
                  },
                },
                {
                  max_retry_delay = {
                    type = "number",
                    required = true,
                    default = 30,
                    between = { 0.001, 1000000 },
                    description = "Most seconds between retries of a failed batch (caps the exponential backoff).",
                  },
                },
                {
                  concurrency_limit = {
                    type = "integer",
                    required = true,
                    default = 1,
                    one_of = { -1, 1 },
                    description = "Batches sent at once. payg always sends one at a time (usage must be counted in order); -1 is accepted for Kong compatibility and means 1.",
                  },
                },
              },
              description = "Bounded in-memory queue for usage events: Kong's plugin queue record (names, types and ranges).",
            },
          },
          {
            usage_queue = {
              type = "record",
              required = false,
              fields = {
                {
                  max_batch_size = {
                    type = "integer",
                    required = false,
                    between = { 1, 10000 },
                    description = "Most usage events sent to the control service in one POST /v1/usage.",
                  },
                },
                {
                  max_coalescing_delay = {
                    type = "number",
                    required = false,
                    between = { 0, 3600 },
                    description = "Seconds a usage event may wait for others to fill a batch before the batch is sent. Usage reaches the control service this much later, so it bounds how long spent credit goes unseen.",
                  },
                },
                {
                  max_entries = {
                    type = "integer",
                    required = false,
                    between = { 1, 1000000 },
                    description = "Most usage events held in memory; when full, new events are dropped and counted.",
                  },
                },
                {
                  initial_retry_delay = {
                    type = "number",
                    required = false,
                    between = { 0.001, 1000000 },
                    description = "Seconds before the first retry of a failed batch; doubles on each retry.",
                  },
                },
                {
                  max_retry_delay = {
                    type = "number",
                    required = false,
                    between = { 0.001, 1000000 },
                    description = "Most seconds between retries of a failed batch (caps the exponential backoff).",
                  },
                },
              },
              description = "Deprecated: the former name of queue. Fields set here still apply (over queue) with a warning; removed in the next release.",
            },
          },
        },
      },
    },
    {
      protocols = {
        type = "set",
        required = true,
        default = { "grpc", "grpcs", "http", "https" },
        elements = {
          type = "string",
          one_of = { "grpc", "grpcs", "http", "https" },
        },
      },
    },
  },
}
