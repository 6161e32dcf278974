/* qemu-aarch64-static wrapper for proot (scripts/arm64-rootfs.sh).
 *
 * Debian bookworm's proot 5.1.0 does not translate the faccessat2 and statx system
 * calls, but qemu-aarch64-static (linked with glibc >= 2.33) implements the guest's
 * access()/faccessat()/`[ -x ]` with faccessat2 and stat-like calls with statx. Those
 * then look up guest paths on the *host* and fail (gcc cannot find cc1, `[ -x file ]`
 * is false). This wrapper installs a seccomp filter that makes both calls fail with
 * ENOSYS, so glibc and qemu fall back to faccessat/newfstatat, which proot translates,
 * and then execs qemu with the same arguments. (proot >= 5.4 handles faccessat2 itself.)
 *
 * Build: cc -O2 -o qemu-aarch64-wrap scripts/arm64-qemu-wrap.c
 * Use:   proot -q /path/to/qemu-aarch64-wrap ...   (QEMU env: EDGECALL_QEMU, default
 *        /usr/bin/qemu-aarch64-static)
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_faccessat2
#define __NR_faccessat2 439
#endif
#ifndef __NR_statx
#define __NR_statx 332
#endif

int main(int argc, char **argv) {
    (void)argc;
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_faccessat2, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_statx, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof(filter) / sizeof(filter[0])), filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("qemu-aarch64-wrap: seccomp");
        return 126;
    }
    const char *qemu = getenv("EDGECALL_QEMU");
    if (!qemu || !*qemu) qemu = "/usr/bin/qemu-aarch64-static";
    argv[0] = (char *)qemu;
    execv(qemu, argv);
    perror("qemu-aarch64-wrap: exec qemu");
    return 127;
}
