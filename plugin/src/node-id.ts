// This plugin server's identity towards the control service: leases are granted
// to it, and it alone can give them back. One per process, so a restarted or a
// second Kong node is a new node, and nobody has to count nodes by hand.
import os from 'node:os';
import { randomBytes } from 'node:crypto';

export const NODE_ID = `${os.hostname()}-${process.pid}-${randomBytes(4).toString('hex')}`;
