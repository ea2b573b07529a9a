/* libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC still rewrites absolute CLOCK_MONOTONIC
   deadlines of clock_nanosleep (wolfcw/libfaketime#426: Python 3.11's time.sleep gets EINVAL).
   Preloaded before libfaketime, this sends monotonic sleeps straight to the kernel. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req, struct timespec *rem) {
    if (clock_id == CLOCK_MONOTONIC || clock_id == CLOCK_BOOTTIME) {
        long r = syscall(SYS_clock_nanosleep, clock_id, flags, req, rem);
        return r == 0 ? 0 : errno;
    }
    int (*next)(clockid_t, int, const struct timespec *, struct timespec *) = dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock_id, flags, req, rem);
}
