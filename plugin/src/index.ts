// The module kong-pdk loads: Plugin, Schema, Version, Priority.
export { Plugin } from './handler';
export { Schema } from './schema';

export const Name = 'payg';
export const Version = '0.1.0';
// After every bundled authentication plugin (the lowest, hmac-auth, is 1030) and
// after acl (950), so the consumer is known and already authorised; before
// rate-limiting (910), so a blocked consumer spends none of its rate limit.
export const Priority = 920;
