// SPDX-License-Identifier: GPL-2.0-only
/*
 * The module information of iova_bitmap.ko. The kernel links drivers/iommu/iommufd/iova_bitmap.c
 * into vmlinux when CONFIG_IOMMUFD_DRIVER is set, so the file declares no license; as a module
 * it would not load (and its GPL-only imports would not resolve) without one.
 */
#include <linux/module.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("IOVA bitmap for iommufd dirty tracking (out-of-tree build for the e2e L1)");
