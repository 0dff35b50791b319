/** Linux x86-64 errno names, for error messages a user can act on ("ioctl(KVM_RUN): EINTR"). */
const NAMES: Record<number, [string, string]> = {
  1: ["EPERM", "Operation not permitted"],
  2: ["ENOENT", "No such file or directory"],
  3: ["ESRCH", "No such process"],
  4: ["EINTR", "Interrupted system call"],
  5: ["EIO", "Input/output error"],
  6: ["ENXIO", "No such device or address"],
  7: ["E2BIG", "Argument list too long"],
  9: ["EBADF", "Bad file descriptor"],
  11: ["EAGAIN", "Resource temporarily unavailable"],
  12: ["ENOMEM", "Cannot allocate memory"],
  13: ["EACCES", "Permission denied"],
  14: ["EFAULT", "Bad address"],
  16: ["EBUSY", "Device or resource busy"],
  17: ["EEXIST", "File exists"],
  19: ["ENODEV", "No such device"],
  20: ["ENOTDIR", "Not a directory"],
  21: ["EISDIR", "Is a directory"],
  22: ["EINVAL", "Invalid argument"],
  24: ["EMFILE", "Too many open files"],
  25: ["ENOTTY", "Inappropriate ioctl for device"],
  27: ["EFBIG", "File too large"],
  28: ["ENOSPC", "No space left on device"],
  29: ["ESPIPE", "Illegal seek"],
  30: ["EROFS", "Read-only file system"],
  32: ["EPIPE", "Broken pipe"],
  34: ["ERANGE", "Numerical result out of range"],
  38: ["ENOSYS", "Function not implemented"],
  95: ["EOPNOTSUPP", "Operation not supported"],
  98: ["EADDRINUSE", "Address already in use"],
  104: ["ECONNRESET", "Connection reset by peer"],
  110: ["ETIMEDOUT", "Connection timed out"],
  111: ["ECONNREFUSED", "Connection refused"],
  115: ["EINPROGRESS", "Operation now in progress"],
  125: ["ECANCELED", "Operation canceled"],
};

export const EINTR = 4;
export const EAGAIN = 11;
export const EEXIST = 17;
export const EINVAL = 22;
export const E2BIG = 7;
export const ENOENT = 2;
export const EFAULT = 14;

export function errnoName(errno: number): string {
  return NAMES[errno]?.[0] ?? `errno ${errno}`;
}

export function errnoMessage(errno: number): string {
  return NAMES[errno]?.[1] ?? `error ${errno}`;
}
